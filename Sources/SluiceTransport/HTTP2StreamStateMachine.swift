import SluiceWire

/// The life of one HTTP/2 request stream as a value: request events in, actions out. It holds the
/// request as it arrives and decides how it is answered; `HTTP2Stream` performs the actions
/// (nghttp2 calls, the outbound queue, the handler task, the deadline timer).
///
/// Request side: `receivingHeaders` → `receivingRequest` → `handling`, or an early answer
/// (`answeredEarly`, `respondingPlain`) that ignores the rest of the request; any of them →
/// `closed`. Two facts run alongside: whether the client ended its half (`requestEnded`), and
/// whether the response HEADERS were submitted (`responseSubmitted`).
struct HTTP2StreamStateMachine {
    /// What serves the stream once its headers are in.
    enum Route: Equatable {
        /// A plain HTTP handler; its body is collected whole.
        case http
        /// An RPC: exactly one request message, answered in the protocol's framing.
        case rpc(RPCProtocol)
    }

    enum State: Equatable {
        /// HEADERS (and CONTINUATION) arriving.
        case receivingHeaders
        /// Routed: the HTTP body or the RPC's message arriving.
        case receivingRequest(Route)
        /// The request is complete and its handler runs; the outbound queue carries the response.
        case handling(Route)
        /// The response was decided before a handler ran (an RPC error status, a deadline, a
        /// shutdown): further request bytes are ignored. No route when it ended during its headers.
        case answeredEarly(Route?)
        /// A plain-text response from the server itself (405, 413, 415).
        case respondingPlain
        /// Completed, reset by the client, or its connection closed.
        case closed
    }

    struct Limits {
        /// RFC 7541 §4.1 bytes for the whole header list.
        var maxHeaderListSize: Int
        /// Largest RPC message, and largest plain HTTP request body.
        var maxMessageSize: Int
    }

    /// A header for a response the machine composes.
    struct Field: Equatable {
        var name: String
        var value: String
    }

    enum HeadersAction: Equatable {
        /// The stream was ended while its headers arrived: nothing to start.
        case none
        /// Make a raw outbound queue and collect the body for the HTTP handler.
        case startHTTP
        /// Make an enveloped outbound queue, collect the message, and arm `deadline` if given.
        case startRPC(RPCProtocol, deadline: Deadline?)
        /// Make an enveloped outbound queue and end the call with this status at once.
        case failRPC(RPCProtocol, StatusCode, String)
        /// Submit the plain response (`plainResponseHead`); its body is served by `readPlainBody`.
        case respondPlain
    }

    typealias Deadline = RPCDeadline

    enum DataAction: Equatable {
        case none
        /// End the call with this status (a malformed or second message).
        case fail(StatusCode, String)
        /// Submit the plain response (413).
        case respondPlain
    }

    enum EndOfRequestAction {
        case none
        case runHTTPHandler(HTTPRequest)
        case runRPCHandler(message: [UInt8])
        case fail(StatusCode, String)
    }

    enum OutputAction: Equatable {
        /// Nothing to send through the outbound queue (none exists, or the stream is closed).
        case none
        /// The response is under way: let nghttp2 ask the data source again.
        case resumeData
        /// Submit the response head once the outbound queue knows its shape (`responseHead`).
        case submitHeadIfReady(trailersOnlyAllowed: Bool)
    }

    enum BodyEnd: Equatable {
        /// END_STREAM on the last DATA frame.
        case endStream
        /// gRPC: the status goes in trailers after the last DATA frame.
        case trailers([Field])
        /// A plain HTTP handler failed: reset the stream instead of ending it cleanly.
        case reset
    }

    let limits: Limits
    private(set) var state = State.receivingHeaders
    /// The client sent END_STREAM.
    private(set) var requestEnded = false
    /// The response HEADERS were handed to nghttp2.
    private(set) var responseSubmitted = false

    private(set) var method: String?
    private(set) var path: String?
    private(set) var contentType: String?
    /// Regular (not pseudo-) headers, in order.
    private(set) var headers: [(name: String, value: String)] = []
    private var headerBytes = 0
    private var requestBody: [UInt8] = []
    private var decoder: EnvelopeDecoder
    /// gRPC-Web text: the request body is base64 in front of the envelopes.
    private var textDecoder: Base64.Decoder?
    /// An RPC's request and response encodings, decided with its route.
    private(set) var encodings = EncodingNegotiation()
    private var requestMessage: [UInt8]?
    private(set) var plainResponseHead: [Field] = []
    private(set) var plainBody: [UInt8] = []
    /// The HTTP route's own answer to a body over the limit, if it has one.
    private var bodyTooLarge: RPCRouter.BodyTooLargeResponse?
    private var plainBodySent = 0

    init(limits: Limits) {
        self.limits = limits
        decoder = EnvelopeDecoder(maxMessageSize: limits.maxMessageSize)
    }

    func header(_ name: String) -> String? {
        headers.first { $0.name == name }?.value
    }

    /// The route part of `:path`, without its query.
    var routePath: String {
        guard let path else { return "" }
        // Looked up once per request: no array of parts, and no copy at all without a query.
        guard let query = path.utf8.firstIndex(of: UInt8(ascii: "?")) else { return path }
        return String(path[..<query])
    }

    // MARK: Request events

    /// One request header. Returns false when the header list exceeds the limit (nghttp2 then
    /// resets the stream).
    mutating func receiveHeader(name: String, value: String) -> Bool {
        precondition(state == .receivingHeaders || state == .answeredEarly(nil), "request header after the header block, in \(state)")
        // RFC 7541 §4.1 size accounting, the same the client sees in SETTINGS_MAX_HEADER_LIST_SIZE.
        headerBytes += name.utf8.count + value.utf8.count + 32
        guard headerBytes <= limits.maxHeaderListSize else { return false }
        switch name {
        case ":method": method = value
        case ":path": path = value
        case "content-type":
            contentType = value
            headers.append((name, value))
        default: if !name.hasPrefix(":") { headers.append((name, value)) }
        }
        return true
    }

    /// The header block is complete. The shell looks the route up in its router first:
    /// `httpRoute` is whether a plain HTTP handler serves `routePath`; `rpcRouteEnforcesDeadline`
    /// is nil when no RPC serves `path`, else whether that RPC has the transport enforce deadlines;
    /// `bodyTooLarge` is the HTTP route's own 413, if it has one.
    mutating func headersComplete(
        httpRoute: Bool, rpcRouteEnforcesDeadline: Bool?, bodyTooLarge: RPCRouter.BodyTooLargeResponse? = nil
    ) -> HeadersAction {
        switch state {
        case .answeredEarly(nil): return .none
        case .receivingHeaders: break
        default: preconditionFailure("the header block completed twice, in \(state)")
        }
        if httpRoute {
            self.bodyTooLarge = bodyTooLarge
            state = .receivingRequest(.http)
            return .startHTTP
        }
        guard method == "POST" else {
            return respondPlain(
                status: 405, extra: Field(name: "allow", value: "POST"),
                body: "\(method ?? "this method") is not allowed: RPCs use POST.\n"
            )
        }
        let type = contentType ?? ""
        guard let rpcProtocol = RPCCallHead.rpcProtocol(contentType: type) else {
            return respondPlain(
                status: 415,
                extra: Field(
                    name: "accept-post",
                    value:
                        "application/grpc, application/grpc+json, application/connect+json, application/json, application/grpc-web+json, application/grpc-web-text+json"
                ),
                body:
                    "Unsupported content-type '\(type)': send application/grpc, application/grpc+json, application/connect+json, application/json (Connect unary), application/grpc-web+json or application/grpc-web-text+json.\n"
            )
        }
        let route = Route.rpc(rpcProtocol)
        switch RPCCallHead.decide(rpcProtocol, header: header, path: path, rpcRouteEnforcesDeadline: rpcRouteEnforcesDeadline) {
        case .fail(_, let code, let message):
            state = .answeredEarly(route)
            return .failRPC(rpcProtocol, code, message)
        case .start(_, let encodings, let deadline):
            self.encodings = encodings
            decoder = EnvelopeDecoder(maxMessageSize: limits.maxMessageSize, encoding: encodings.request)
            if rpcProtocol == .grpcWebText { textDecoder = Base64.Decoder() }
            state = .receivingRequest(route)
            return .startRPC(rpcProtocol, deadline: deadline)
        }
    }

    /// A CORS preflight: answered 204 with `headers`, without routing the request.
    mutating func answerPreflight(_ headers: [(String, String)]) -> HeadersAction {
        switch state {
        case .answeredEarly(nil): return .none
        case .receivingHeaders: break
        default: preconditionFailure("a preflight is answered when its headers complete, in \(state)")
        }
        state = .respondingPlain
        plainBody = []
        plainResponseHead = [Field(name: ":status", value: "204")] + headers.map { Field(name: $0.0, value: $0.1) }
        return .respondPlain
    }

    /// Requests carry base64 images and documents, which are what usually hits the limit.
    static let sizeLimitHint =
        " (the server's --max-message-size; base64 image and document data count towards it: send fewer or smaller files, or URL sources)"

    /// What a 413 says, over HTTP/1.1 and HTTP/2 alike.
    static func bodyTooLargeMessage(limit: Int) -> String {
        "The request body exceeds the limit of \(limit) bytes\(sizeLimitHint)."
    }

    /// A chunk of the request body.
    mutating func receiveData(_ bytes: UnsafeRawBufferPointer) -> DataAction {
        guard case .receivingRequest(let route) = state else { return .none }
        switch route {
        case .http:
            guard requestBody.count + bytes.count <= limits.maxMessageSize else {
                let message = Self.bodyTooLargeMessage(limit: limits.maxMessageSize)
                if let response = bodyTooLarge?(message) {
                    state = .respondingPlain
                    plainBody = Array(response.body.utf8)
                    plainResponseHead =
                        [Field(name: ":status", value: String(response.status))] + response.headers.map { Field(name: $0.0, value: $0.1) }
                } else {
                    preparePlainResponse(status: 413, extra: nil, body: message + "\n")
                }
                requestBody = []
                return .respondPlain
            }
            requestBody.append(contentsOf: bytes)
            return .none
        case .rpc:
            if textDecoder != nil {
                guard let decoded = textDecoder?.feed(bytes) else {
                    return fail(route, .invalidArgument, "a grpc-web-text request body is not valid base64")
                }
                decoder.append(decoded)
            } else {
                decoder.append(bytes)
            }
            do {
                while let envelope = try decoder.next() {
                    guard requestMessage == nil else {
                        return fail(route, .invalidArgument, "this method takes exactly one request message, but the client sent more")
                    }
                    requestMessage = envelope.payload
                }
            } catch {
                return fail(route, error.code, error.code == .resourceExhausted ? error.message + Self.sizeLimitHint : error.message)
            }
            return .none
        }
    }

    /// The client sent END_STREAM.
    mutating func endOfRequest() -> EndOfRequestAction {
        requestEnded = true
        guard case .receivingRequest(let route) = state else { return .none }
        switch route {
        case .http:
            state = .handling(.http)
            let target = (path ?? "/").split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
            let request = HTTPRequest(
                method: method ?? "GET", path: String(target[0]), query: target.count > 1 ? String(target[1]) : nil,
                headers: headers, body: requestBody
            )
            requestBody = []
            return .runHTTPHandler(request)
        case .rpc:
            if let textDecoder, !textDecoder.isComplete {
                state = .answeredEarly(route)
                return .fail(.invalidArgument, "a grpc-web-text request body ends inside a base64 group")
            }
            if let description = decoder.partialMessageDescription {
                state = .answeredEarly(route)
                return .fail(.invalidArgument, description)
            }
            guard let message = requestMessage else {
                state = .answeredEarly(route)
                return .fail(.invalidArgument, "this method takes exactly one request message, but the client sent none")
            }
            requestMessage = nil
            state = .handling(route)
            return .runRPCHandler(message: message)
        }
    }

    /// The call must end now (its deadline, the server's drain timeout). Returns true when an
    /// outbound queue exists to abort (and a handler to cancel).
    mutating func end() -> Bool {
        switch state {
        case .receivingHeaders:
            state = .answeredEarly(nil)
            return false
        case .receivingRequest(let route):
            state = .answeredEarly(route)
            return true
        case .handling, .answeredEarly(.some):
            return true
        case .answeredEarly(nil), .respondingPlain, .closed:
            return false
        }
    }

    /// The stream closed (completed or reset), or its connection did.
    mutating func close() {
        state = .closed
    }

    private mutating func fail(_ route: Route, _ code: StatusCode, _ message: String) -> DataAction {
        state = .answeredEarly(route)
        return .fail(code, message)
    }

    private mutating func respondPlain(status: Int, extra: Field?, body: String) -> HeadersAction {
        preparePlainResponse(status: status, extra: extra, body: body)
        return .respondPlain
    }

    private mutating func preparePlainResponse(status: Int, extra: Field?, body: String) {
        state = .respondingPlain
        plainBody = Array(body.utf8)
        plainResponseHead = [
            Field(name: ":status", value: String(status)), Field(name: "content-type", value: "text/plain; charset=utf-8"),
        ]
        if let extra { plainResponseHead.append(extra) }
    }

    // MARK: Response

    /// The outbound queue has something new (bytes, a status, a head), or the server answered.
    func outputReady() -> OutputAction {
        if responseSubmitted { return .resumeData }
        switch state {
        case .receivingRequest(let route), .handling(let route), .answeredEarly(.some(let route)):
            return .submitHeadIfReady(trailersOnlyAllowed: route == .rpc(.grpc))
        case .receivingHeaders, .answeredEarly(nil), .respondingPlain, .closed:
            return .none
        }
    }

    /// The head to submit now that the outbound queue's shape is known: `trailersOnlyStatus` for a
    /// gRPC call that ended with nothing sent, `httpHead` for a plain HTTP handler's response.
    /// Returns the fields and whether a body (a data source) follows.
    mutating func responseHead(
        trailersOnlyStatus: (code: StatusCode, message: String)?, httpHead: [(String, String)]?
    ) -> (fields: [Field], withBody: Bool) {
        precondition(!responseSubmitted, "the response head is submitted once")
        responseSubmitted = true
        if state == .respondingPlain { return (plainResponseHead, !plainBody.isEmpty) }
        guard let route else { preconditionFailure("a response head before the stream was routed, in \(state)") }
        switch route {
        case .http:
            return ((httpHead ?? [(":status", "500")]).map { Field(name: $0.0, value: $0.1) }, true)
        case .rpc(let rpcProtocol):
            let accept = Field(name: "grpc-accept-encoding", value: MessageEncoding.advertised)
            if let status = trailersOnlyStatus {
                let head = [Field(name: ":status", value: "200"), Field(name: "content-type", value: contentType ?? "application/grpc")]
                return (head + [accept] + Self.statusFields(status), false)
            }
            let head = RPCCallHead.responseHead(rpcProtocol, contentType: contentType, encodings: encodings)
            return (head.map { Field(name: $0.0, value: $0.1) }, true)
        }
    }

    /// The route of a stream past its headers, nil before or without one.
    var route: Route? {
        switch state {
        case .receivingRequest(let route), .handling(let route), .answeredEarly(.some(let route)): route
        case .receivingHeaders, .answeredEarly(nil), .respondingPlain, .closed: nil
        }
    }

    /// Copies the next bytes of a plain response. Returns the count and whether the body is done.
    mutating func readPlainBody(into buffer: UnsafeMutableRawBufferPointer) -> (count: Int, end: Bool) {
        precondition(state == .respondingPlain, "a plain body is read only for a plain response, in \(state)")
        let count = min(buffer.count, plainBody.count - plainBodySent)
        plainBody.withUnsafeBytes { source in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[plainBodySent..<plainBodySent + count]))
        }
        plainBodySent += count
        return (count, plainBodySent == plainBody.count)
    }

    /// How the response ends once the outbound queue is drained with `status`.
    func bodyEnd(status: (code: StatusCode, message: String)?) -> BodyEnd {
        switch route {
        case .http?: status.map { $0.code != .ok } ?? false ? .reset : .endStream
        case .rpc(.grpc)?: status.map { .trailers(Self.statusFields($0)) } ?? .endStream
        case .rpc(.connect)?, .rpc(.grpcWeb)?, .rpc(.grpcWebText)?, nil: .endStream
        }
    }

    private static func statusFields(_ status: (code: StatusCode, message: String)) -> [Field] {
        var fields = [Field(name: "grpc-status", value: String(status.code.rawValue))]
        if !status.message.isEmpty { fields.append(Field(name: "grpc-message", value: GRPCMessageEncoding.encode(status.message))) }
        return fields
    }
}
