import SluiceIO
import SluiceWire

/// Which RPC protocol a call speaks; both use the same 5-byte envelope.
public enum RPCProtocol: Sendable {
    /// `application/grpc*`: status in HTTP trailers.
    case grpc
    /// `application/connect+json`: status in a final end-stream envelope.
    case connect
    /// `application/grpc-web*` (browsers, over HTTP/1.1 or HTTP/2): status in a final frame flagged 0x80.
    case grpcWeb
    /// `application/grpc-web-text*`: gRPC-Web with request and response bodies base64-encoded.
    case grpcWebText

    /// What ends a response in the body, for the protocols whose status travels there.
    func endOfCallFrame(_ code: StatusCode, _ message: String) -> [UInt8]? {
        switch self {
        case .grpc: nil
        case .connect: EnvelopeEncoder.encode(ConnectEndStream.body(status: code, message: message), flags: .endStream)
        case .grpcWeb: GRPCWebTrailers.frame(status: code, message: message)
        case .grpcWebText: Base64.encode(GRPCWebTrailers.frame(status: code, message: message))
        }
    }
}

/// A server-streaming call as a handler sees it: the single request message has arrived.
public struct RPCRequest: Sendable {
    public let path: String
    public let rpcProtocol: RPCProtocol
    /// Header names are lower-case, as HTTP/2 requires.
    public let headers: [(name: String, value: String)]
    /// The request message's bytes (JSON).
    public let message: [UInt8]
    /// When the client's `grpc-timeout` / `connect-timeout-ms` expires.
    public let deadline: ContinuousClock.Instant?
    /// The event loop for work that feeds this call (a job producing its messages): the call's
    /// connection's own loop unless another is less busy. The handler itself runs on the connection's loop.
    public let executor: EventLoop?

    public init(
        path: String, rpcProtocol: RPCProtocol, headers: [(name: String, value: String)], message: [UInt8],
        deadline: ContinuousClock.Instant?, executor: EventLoop? = nil
    ) {
        self.path = path
        self.rpcProtocol = rpcProtocol
        self.headers = headers
        self.message = message
        self.deadline = deadline
        self.executor = executor
    }

    public func header(_ name: String) -> String? {
        headers.first { $0.name == name }?.value
    }
}

/// Sends response messages of one call. `write` suspends while the client is not reading
/// and more than the stream's queue capacity is waiting (backpressure), and throws once the
/// call is over (client reset, deadline, shutdown).
public struct RPCResponseWriter: Sendable {
    let outbound: StreamOutbound

    /// - Parameter since: when the message came to be; the server then reports how long after it the message
    ///   was handed to the connection (`HTTP2ServerConfiguration.messageDelivered`).
    public func write(_ message: some Collection<UInt8>, since: ContinuousClock.Instant? = nil) async throws {
        try await outbound.write(message, since: since)
    }

    /// Queues `message` if that needs no waiting, from any thread and without suspending; false when the
    /// client is not keeping up or the call is over (then `write` waits, or throws the reason).
    public func tryWrite(_ message: some Collection<UInt8>, since: ContinuousClock.Instant? = nil) -> Bool {
        outbound.tryWrite(message, since: since)
    }

    /// Set when the client left before the call ended: it reset the stream, or its connection closed.
    public var disconnect: RPCDisconnect? { outbound.disconnect }
}

/// How a client left a call early.
public enum RPCDisconnect: Sendable, Equatable {
    /// RST_STREAM from the client (gRPC clients cancel with CANCEL, 0x8).
    case reset(errorCode: UInt32)
    /// The connection closed under the call.
    case connectionLost
}

/// A method handler. Returning ends the call with OK; throwing `RPCError` ends it with that
/// status; any other error ends it with INTERNAL.
public typealias RPCHandler = @Sendable (RPCRequest, RPCResponseWriter) async throws -> Void

/// Maps `/package.Service/Method` paths to RPC handlers, and other paths to plain HTTP handlers.
public struct RPCRouter: Sendable {
    private var handlers: [String: (handler: RPCHandler, enforcesDeadline: Bool)] = [:]
    private var httpHandlers: [String: HTTPHandler] = [:]
    private var bodyTooLargeResponses: [String: BodyTooLargeResponse] = [:]
    /// Longest prefix first, so the most specific route wins.
    private var httpPrefixHandlers: [(prefix: String, handler: HTTPHandler)] = []

    public init() {}

    /// - Parameter enforcesDeadline: the handler ends the call itself when `RPCRequest.deadline`
    ///   passes (with its own final message); the transport then only steps in as a backstop,
    ///   `deadlineBackstop` later, instead of cutting the call at the deadline.
    public mutating func register(_ path: String, enforcesDeadline: Bool = false, _ handler: @escaping RPCHandler) {
        precondition(path.hasPrefix("/") && path.dropFirst().contains("/"), "RPC paths look like /package.Service/Method")
        handlers[path] = (handler, enforcesDeadline)
    }

    /// How long after the deadline the transport ends a call whose handler enforces deadlines itself.
    public static let deadlineBackstop: Duration = .milliseconds(50)

    /// Serves any method on `path` (without query) as plain HTTP instead of an RPC.
    /// - Parameter bodyTooLarge: the route's own answer to a request body over the limit (an API's error shape),
    ///   given the transport's explanation; without one the transport answers 413 in plain text. The handler
    ///   never runs for such a request: the transport stops reading its body.
    public mutating func registerHTTP(_ path: String, bodyTooLarge: BodyTooLargeResponse? = nil, _ handler: @escaping HTTPHandler) {
        httpHandlers[path] = handler
        bodyTooLargeResponses[path] = bodyTooLarge
    }

    /// A route's response to a request body over `--max-message-size`, given the transport's explanation of the limit.
    public typealias BodyTooLargeResponse = @Sendable (_ message: String) -> HTTPFixedResponse

    /// Serves any method on every path starting with `prefix` (without query) as plain HTTP; exact
    /// paths registered with `registerHTTP(_:_:)` take precedence. The handler parses the rest of the path.
    public mutating func registerHTTP(prefix: String, _ handler: @escaping HTTPHandler) {
        precondition(prefix.hasPrefix("/") && prefix.hasSuffix("/"), "HTTP route prefixes look like /segment/")
        httpPrefixHandlers.append((prefix, handler))
        httpPrefixHandlers.sort { $0.prefix.count > $1.prefix.count }
    }

    func handler(for path: String) -> (handler: RPCHandler, enforcesDeadline: Bool)? {
        handlers[path]
    }

    func httpHandler(for path: String) -> HTTPHandler? {
        httpHandlers[path] ?? httpPrefixHandlers.first { path.hasPrefix($0.prefix) }?.handler
    }

    func bodyTooLargeResponse(for path: String) -> BodyTooLargeResponse? {
        bodyTooLargeResponses[path]
    }
}

/// A plain HTTP request (health, metrics, the simulator's Messages API): body fully received.
public struct HTTPRequest: Sendable {
    public let method: String
    /// The path without its query.
    public let path: String
    public let query: String?
    public let headers: [(name: String, value: String)]
    public let body: [UInt8]

    public func header(_ name: String) -> String? {
        headers.first { $0.name == name }?.value
    }
}

/// Sends a plain HTTP response: `head` first, then body bytes with backpressure.
public struct HTTPResponseWriter: Sendable {
    let outbound: StreamOutbound

    public func head(status: Int, headers: [(String, String)] = []) throws {
        try outbound.setHead([(":status", String(status))] + headers.map { ($0.0.lowercased(), $0.1) })
    }

    /// - Parameter since: as for `RPCResponseWriter.write`.
    public func write(_ bytes: some Collection<UInt8>, since: ContinuousClock.Instant? = nil) async throws {
        try await outbound.write(bytes, since: since)
    }

    /// Queues `bytes` if that needs no waiting, from any thread and without suspending; false before the head is
    /// set, while the client is not keeping up, or once the response is over (then `write` waits, or throws why).
    public func tryWrite(_ bytes: some Collection<UInt8>, since: ContinuousClock.Instant? = nil) -> Bool {
        outbound.tryWrite(bytes, since: since)
    }
}

/// A whole response the transport sends itself, without running a handler.
public struct HTTPFixedResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: String

    public init(status: Int, headers: [(String, String)], body: String) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// Thrown by an HTTP handler to reset its stream (RST_STREAM INTERNAL_ERROR) instead of
/// ending it cleanly: how the simulator cuts a response off mid-way.
public struct HTTPStreamReset: Error {
    public init() {}
}

/// A plain HTTP handler. Returning ends the body; a handler must call `head` first.
public typealias HTTPHandler = @Sendable (HTTPRequest, HTTPResponseWriter) async throws -> Void
