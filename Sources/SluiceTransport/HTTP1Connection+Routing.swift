import CHTTPParser

/// Which handler answers an HTTP/1.1 request, or why none does.
extension HTTP1Connection {
    enum Route {
        case handler(HTTPHandler, HTTPRequest)
        /// A Connect or gRPC-Web call: its status travels in the body's last message, so HTTP/1.1 can carry it.
        case rpc(RPCCallHead.Decision, path: String, headers: [(name: String, value: String)])
        case refuse(status: Int, headers: [(String, String)], body: String)
    }

    /// Connection-level headers, which HTTP/2 forbids: handlers see the same headers either way.
    private static let hopByHopHeaders: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
    ]

    func route(_ request: HTTP1Request) -> Route {
        let text = Self.textHeaders
        if request.method == "CONNECT" {
            let body = "CONNECT is not supported: this server is not a proxy.\n"
            return .refuse(status: 405, headers: text + [("allow", "GET, HEAD, POST")], body: body)
        }
        guard let (path, query) = Self.splitTarget(request.target) else {
            return .refuse(status: 400, headers: text, body: "The request target must be a path such as /healthz.\n")
        }
        if request.versionMinor >= 1 && request.header("host") == nil {
            return .refuse(status: 400, headers: text, body: "An HTTP/1.1 request needs a Host header.\n")
        }
        if case .preflight(let headers) = server.configuration.cors.decide(method: request.method, header: request.header) {
            return .refuse(status: 204, headers: headers, body: "")
        }
        let contentType = request.header("content-type") ?? ""
        let rpcRoute = server.router.handler(for: path)
        let headers = request.headers.filter { !Self.hopByHopHeaders.contains($0.name) }
        // Connect unary on an RPC path, or on a path nothing serves (then UNIMPLEMENTED, as Connect clients expect).
        if ConnectUnary.isUnaryRequest(method: request.method, contentType: contentType),
            rpcRoute != nil || server.router.httpHandler(for: path) == nil
        {
            let configuration = server.configuration
            let handler = ConnectUnary.handler(
                rpcRoute?.handler, maxMessageSize: configuration.limits.maxMessageSize, compressMinBytes: configuration.compressMinBytes)
            return .handler(handler, HTTPRequest(method: request.method, path: path, query: query, headers: headers, body: request.body))
        }
        if let rpcProtocol = RPCCallHead.rpcProtocol(contentType: contentType), rpcProtocol != .grpc {
            guard request.method == "POST" else {
                return .refuse(status: 405, headers: text + [("allow", "POST")], body: "\(request.method) is not allowed: RPCs use POST.\n")
            }
            let decision = RPCCallHead.decide(
                rpcProtocol, header: request.header, path: path, rpcRouteEnforcesDeadline: rpcRoute?.enforcesDeadline)
            return .rpc(decision, path: path, headers: headers)
        }
        if contentType.hasPrefix("application/grpc") || contentType.hasPrefix("application/connect") || rpcRoute != nil {
            let body =
                "gRPC calls need HTTP/2, which carries their status in trailers: use HTTP/2 with prior knowledge (h2c, e.g. "
                + "curl --http2-prior-knowledge) or TLS with ALPN h2, or call with Connect (application/connect+json) "
                + "or gRPC-Web (application/grpc-web+json), which work over HTTP/1.1.\n"
            return .refuse(status: 505, headers: text, body: body)
        }
        guard let handler = server.router.httpHandler(for: path) else {
            return .refuse(status: 404, headers: text, body: "No such path: \(path)\n")
        }
        return .handler(handler, HTTPRequest(method: request.method, path: path, query: query, headers: headers, body: request.body))
    }

    /// Path and query of an origin-form (`/p?q`) or absolute-form (`http://host/p?q`) target.
    static func splitTarget(_ target: String) -> (path: String, query: String?)? {
        if target.hasPrefix("/") {
            let parts = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
            return (String(parts[0]), parts.count > 1 ? String(parts[1]) : nil)
        }
        var url = http_parser_url()
        http_parser_url_init(&url)
        let bytes = Array(target.utf8)
        guard http_parser_parse_url(target, bytes.count, 0, &url) == 0 else { return nil }
        func field(_ index: http_parser_url_fields) -> String? {
            guard url.field_set & (1 << index.rawValue) != 0 else { return nil }
            // Swift does not import the array of anonymous {off, len} structs that follows
            // field_set and port (all uint16_t, so no padding).
            let (offset, length) = withUnsafeBytes(of: url) { raw in
                let entry = 4 + 4 * Int(index.rawValue)
                return (Int(raw.load(fromByteOffset: entry, as: UInt16.self)), Int(raw.load(fromByteOffset: entry + 2, as: UInt16.self)))
            }
            return String(decoding: bytes[offset..<offset + length], as: UTF8.self)
        }
        guard field(UF_SCHEMA) != nil else { return nil }
        return (field(UF_PATH) ?? "/", field(UF_QUERY))
    }
}
