import Metrics
import SluiceEngine

extension StreamRoute {
    /// Counts a request on this route, `sluice_requests_total{route}`: every call or HTTP request, the ones that
    /// start no stream included (Cancel, Resume, count_tokens, errors), and Connect unary calls on the RPC paths.
    func countRequest() {
        Counter(label: "sluice_requests_total", dimensions: [("route", rawValue)]).increment()
    }
}
