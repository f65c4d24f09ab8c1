/// Which browser origins may call the server from their pages (CORS), and the headers that say so. A value
/// deciding from a request's headers alone; the HTTP/2 stream and the HTTP/1.1 connection add what it returns.
public struct CORSPolicy: Sendable, Equatable {
    /// Exact origins (`https://app.example.com`); none by default, so browsers on other origins are refused.
    public var allowedOrigins: Set<String>

    public init(allowedOrigins: Set<String> = []) {
        self.allowedOrigins = allowedOrigins
    }

    enum Decision: Equatable {
        /// Not a cross-origin request this policy speaks to (no `Origin`, or one not allowed): answer as usual,
        /// without CORS headers, so a browser withholds the response from a page of another origin.
        case none
        /// A preflight (`OPTIONS` with `Access-Control-Request-Method`): answer 204 with these headers (none
        /// when the origin is not allowed) and do not route the request.
        case preflight([(String, String)])
        /// An allowed origin's request: add these headers to its response.
        case allow([(String, String)])

        static func == (lhs: Decision, rhs: Decision) -> Bool {
            switch (lhs, rhs) {
            case (.none, .none): true
            case (.preflight(let a), .preflight(let b)), (.allow(let a), .allow(let b)): a.elementsEqual(b) { $0 == $1 }
            default: false
            }
        }
    }

    /// The response headers a page may read: the RPC statuses and encodings, which gRPC-Web and Connect clients
    /// read from headers (trailers-only answers too).
    static let exposedHeaders =
        "grpc-status, grpc-message, grpc-encoding, grpc-accept-encoding, connect-content-encoding, connect-accept-encoding"

    func decide(method: String?, header: (String) -> String?) -> Decision {
        let isPreflight = method == "OPTIONS" && header("access-control-request-method") != nil
        guard let origin = header("origin"), allowedOrigins.contains(origin) else {
            return isPreflight ? .preflight([("vary", "origin")]) : .none
        }
        let common = [("access-control-allow-origin", origin), ("vary", "origin")]
        guard isPreflight else { return .allow(common + [("access-control-expose-headers", Self.exposedHeaders)]) }
        var headers = common + [("access-control-allow-methods", "GET, POST, DELETE, OPTIONS"), ("access-control-max-age", "600")]
        // Whatever the page asked to send (content-type, authorization, x-grpc-web, grpc-timeout, traceparent…).
        if let requested = header("access-control-request-headers") { headers.append(("access-control-allow-headers", requested)) }
        return .preflight(headers)
    }
}
