import Metrics
import SluiceWire

/// The engine's metrics, through swift-metrics (the service exports them as Prometheus text). Each carries the
/// `route` its stream came through.
struct EngineMetrics: Sendable {
    func finished(_ code: StatusCode, route: StreamRoute) {
        Counter(label: "sluice_streams_completed_total", dimensions: [("route", route.rawValue), ("status", code.name)]).increment()
    }

    func retried(reason: String, route: StreamRoute) {
        Counter(label: "sluice_upstream_retries_total", dimensions: [("reason", reason), ("route", route.rawValue)]).increment()
    }

    func abandoned(route: StreamRoute) {
        Counter(label: "sluice_streams_abandoned_cleaned_total", dimensions: [("route", route.rawValue)]).increment()
    }

    func tookOver(route: StreamRoute) {
        Counter(label: "sluice_streams_taken_over_total", dimensions: [("route", route.rawValue)]).increment()
    }

    /// A stream this replica handed off while shutting down; `acknowledged`: the store released it (else it is
    /// claimed once its lease lapses).
    func handedOff(acknowledged: Bool) {
        Counter(label: "sluice_streams_handed_off_total", dimensions: [("acknowledged", acknowledged ? "true" : "false")]).increment()
    }

    func rejected(route: StreamRoute) {
        Counter(label: "sluice_streams_rejected_total", dimensions: [("route", route.rawValue)]).increment()
    }

    func timeToFirstToken(_ duration: Duration, route: StreamRoute) {
        Timer(label: "sluice_time_to_first_token_seconds", dimensions: [("route", route.rawValue)]).recordNanoseconds(duration.nanoseconds)
    }
}
