import Glibc
import SluiceIO
import SluiceWire
import Synchronization

public struct HTTP2ClientConfiguration: Sendable {
    /// Most streams one connection carries; the server's SETTINGS_MAX_CONCURRENT_STREAMS lowers it.
    public var streamsPerConnection = 100
    /// Most connections per target (across all loops); nil opens as many as the streams need.
    /// Streams beyond what the connections can carry wait for a slot.
    public var maxConnectionsPerTarget: Int?
    /// PEM CA certificates for `https://` targets; nil uses the system's trust store.
    public var caCertificatePath: String?
    /// Largest response message accepted; a larger one fails the call with RESOURCE_EXHAUSTED.
    public var maxMessageSize = EnvelopeDecoder.defaultMaxMessageSize
    /// Giving up on TCP connect plus TLS handshake.
    public var connectTimeout: Duration = .seconds(10)
    /// Sent as `content-type`: gRPC with JSON messages. An `application/connect+…` type speaks the Connect
    /// streaming protocol instead (`connect-timeout-ms`, the status in an end-stream message).
    public var contentType = "application/grpc+json"

    var isConnect: Bool { contentType.hasPrefix("application/connect") }

    public init() {}
}

/// Where calls go: `http://host[:port]` (h2c, prior knowledge) or `https://host[:port]` (TLS, ALPN h2).
public struct HTTP2Target: Sendable, Hashable, CustomStringConvertible {
    public let isTLS: Bool
    public let host: String
    public let port: Int

    public init(url: String) throws {
        let scheme: Bool
        let rest: Substring
        if url.hasPrefix("http://") {
            (scheme, rest) = (false, url.dropFirst(7))
        } else if url.hasPrefix("https://") {
            (scheme, rest) = (true, url.dropFirst(8))
        } else {
            throw IOError.configuration("target '\(url)' must start with http:// (h2c) or https:// (TLS)")
        }
        var authority = rest
        if authority.hasSuffix("/") { authority = authority.dropLast() }
        guard !authority.isEmpty, !authority.contains("/"), !authority.contains("@") else {
            throw IOError.configuration("target '\(url)' must be scheme://host[:port], without a path")
        }
        var host = authority
        var port = scheme ? 443 : 80
        if authority.hasPrefix("[") {
            // [IPv6]:port
            guard let close = authority.firstIndex(of: "]") else {
                throw IOError.configuration("target '\(url)': unterminated [IPv6 address]")
            }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let value = Int(after.dropFirst()) else {
                    throw IOError.configuration("target '\(url)': bad port")
                }
                port = value
            }
        } else if let colon = authority.lastIndex(of: ":") {
            guard let value = Int(authority[authority.index(after: colon)...]) else {
                throw IOError.configuration("target '\(url)': bad port")
            }
            host = authority[..<colon]
            port = value
        }
        guard (1...65535).contains(port), !host.isEmpty else {
            throw IOError.configuration("target '\(url)': bad host or port")
        }
        self.isTLS = scheme
        self.host = String(host)
        self.port = port
    }

    /// The `:authority` pseudo-header.
    var authority: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    public var description: String { "\(isTLS ? "https" : "http")://\(authority)" }
}

/// How a call ended: the gRPC status from the trailers (or a trailers-only response), or one the
/// client derived from an HTTP error, a reset, a lost connection, a cancellation or its deadline.
public struct RPCClientStatus: Sendable, Equatable, CustomStringConvertible {
    public var code: StatusCode
    /// Percent-decoded `grpc-message`, or the client's explanation.
    public var message: String
    /// The response's HTTP status, when response headers arrived.
    public var httpStatus: Int?

    public init(code: StatusCode, message: String, httpStatus: Int? = nil) {
        self.code = code
        self.message = message
        self.httpStatus = httpStatus
    }

    public var isOK: Bool { code == .ok }
    public var description: String { message.isEmpty ? code.name : "\(code.name): \(message)" }
}

/// Receives one call's response. Both methods run on the client's event-loop thread, in order,
/// `callFinished` exactly once and last: keep them short and never block.
public protocol RPCClientCallObserver: AnyObject, Sendable {
    func callReceived(_ message: [UInt8])
    func callFinished(_ status: RPCClientStatus)
}

/// Cancels a call from any thread: RST_STREAM(CANCEL) if it is on the wire, and the call
/// finishes with CANCELLED (a no-op once it has finished).
public struct RPCClientCallHandle: Sendable {
    let loop: EventLoop
    let stream: LoopBound<HTTP2ClientStream>

    public func cancel() {
        let stream = self.stream
        loop.execute { stream.value.cancel(.cancelled, "the call was cancelled by the client") }
    }
}

/// An HTTP/2 gRPC client: a pool of multiplexed connections per target on its own epoll loops.
///
/// The core API (`startCall`) costs one small object per call and no task: responses reach an
/// observer on the loop thread, which is what lets one process hold tens of thousands of
/// streams. `unaryStream` layers an `AsyncSequence` on top. Response flow control is nghttp2's
/// automatic WINDOW_UPDATE: the client always reads, and the AsyncSequence buffers.
public final class HTTP2Client: Sendable {
    public let configuration: HTTP2ClientConfiguration
    private let loops: [EventLoop]
    private let contexts: [LoopBound<ClientLoopContext>]
    let tlsContext: TLSClientContext?
    private let nextLoop = Atomic<Int>(0)
    private let connectionCount = ConnectionCounter()
    private let exits = LockedValue<(remaining: Int, waiters: [CheckedContinuation<Void, Never>], stopping: Bool)>((0, [], false))

    public init(loops loopCount: Int = 1, configuration: HTTP2ClientConfiguration = .init()) throws {
        precondition(loopCount >= 1, "a client needs at least one event loop")
        precondition(configuration.streamsPerConnection >= 1, "streamsPerConnection must be at least 1")
        self.configuration = configuration
        // Loaded eagerly so a bad --ca-cert fails at once rather than at the first https call.
        tlsContext = try TLSClientContext(caCertificatePath: configuration.caCertificatePath)
        var loops: [EventLoop] = []
        var contexts: [LoopBound<ClientLoopContext>] = []
        for index in 0..<loopCount {
            let loop = try EventLoop(index: index)
            loops.append(loop)
            contexts.append(
                LoopBound(
                    ClientLoopContext(
                        loop: loop, configuration: configuration, tlsContext: tlsContext, loopCount: loopCount,
                        connectionCount: connectionCount
                    ), loop: loop))
        }
        self.loops = loops
        self.contexts = contexts
        exits.withLock { $0.remaining = loopCount }
        // Writing to a server that vanished fails with EPIPE instead of killing the process.
        signal(SIGPIPE, SIG_IGN)
        for (loop, context) in zip(loops, contexts) {
            loop.onIterationEnd = { context.value.iterationEnd() }
            loop.start { [weak self] in self?.loopExited() }
        }
    }

    /// The loops the client runs on: a caller's own periodic work can run there (as a task executor) without
    /// waking another thread.
    public var eventLoops: [EventLoop] { loops }

    /// Connections open (or opening) now, across targets and loops.
    public var openConnections: Int { connectionCount.value.load(ordering: .relaxed) }

    /// Starts a server-streaming call with one request message; `observer` gets the response on a
    /// loop thread. `headers` are extra metadata (lower-case names), e.g. `authorization`.
    /// `timeout` is sent as `grpc-timeout` and also enforced here.
    @discardableResult
    public func startCall(
        target: HTTP2Target, path: String, headers: [(String, String)] = [], message: some Collection<UInt8>,
        timeout: Duration? = nil, observer: any RPCClientCallObserver
    ) -> RPCClientCallHandle {
        var requestHeaders: [(String, String)] = [
            (":method", "POST"), (":scheme", target.isTLS ? "https" : "http"), (":authority", target.authority),
            (":path", path), ("content-type", configuration.contentType), ("te", "trailers"),
        ]
        if configuration.isConnect {
            requestHeaders.append(("connect-protocol-version", "1"))
            if let timeout { requestHeaders.append(("connect-timeout-ms", String(max(1, timeout.nanoseconds / 1_000_000)))) }
        } else if let timeout {
            requestHeaders.append(("grpc-timeout", Timeouts.formatGRPCTimeout(timeout)))
        }
        requestHeaders += headers
        let stream = HTTP2ClientStream(
            headers: requestHeaders, body: EnvelopeEncoder.encode(message), isConnect: configuration.isConnect, timeout: timeout,
            maxMessageSize: configuration.maxMessageSize, observer: observer
        )
        let index = nextLoop.wrappingAdd(1, ordering: .relaxed).oldValue % loops.count
        let context = contexts[index]
        let bound = LoopBound(stream, loop: loops[index])
        let accepted = loops[index].execute { context.value.start(bound.value, target: target) }
        if !accepted {
            // The loop has stopped: nothing would ever finish the call.
            observer.callFinished(RPCClientStatus(code: .unavailable, message: "the client has shut down"))
        }
        return RPCClientCallHandle(loop: loops[index], stream: bound)
    }

    /// The same call as an `AsyncSequence` of response messages. Cancelling the iterating task
    /// (or dropping the call unfinished) resets the stream with CANCEL.
    public func unaryStream(
        url: String, path: String, headers: [(String, String)] = [], message: [UInt8], timeout: Duration? = nil
    ) throws -> RPCClientCall {
        let target = try HTTP2Target(url: url)
        return RPCClientCall { observer in
            startCall(target: target, path: path, headers: headers, message: message, timeout: timeout, observer: observer)
        }
    }

    /// Closes every open connection at once, as a network failure would: their calls fail with UNAVAILABLE,
    /// and later calls connect again.
    package func dropConnections(reason: String) {
        for context in contexts {
            context.loop.execute { context.value.dropConnections(reason: reason) }
        }
    }

    /// Fails every call still running with UNAVAILABLE, closes the connections and stops the
    /// loops; returns once their threads have ended.
    public func shutdown() async {
        let first = exits.withLock { state in
            defer { state.stopping = true }
            return !state.stopping
        }
        if first {
            for (loop, context) in zip(loops, contexts) {
                loop.execute {
                    context.value.closeAll()
                    loop.stop()
                }
            }
        }
        await withCheckedContinuation { continuation in
            let done = exits.withLock { state in
                if state.remaining == 0 { return true }
                state.waiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    private func loopExited() {
        let waiters = exits.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.remaining -= 1
            guard state.remaining == 0 else { return [] }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// Per-loop client state: a pool per target, and the work deferred to the end of each loop
/// iteration (starting queued streams, flushing connections) so none of it runs inside nghttp2.
final class ClientLoopContext {
    unowned let loop: EventLoop
    let configuration: HTTP2ClientConfiguration
    let tlsContext: TLSClientContext?
    /// This loop's share of `maxConnectionsPerTarget`.
    let maxConnectionsPerPool: Int
    let connectionCount: ConnectionCounter
    private var pools: [HTTP2Target: HTTP2ClientPool] = [:]
    private var pendingFlush: [HTTP2ClientConnection] = []
    private var pendingPumps: [HTTP2ClientPool] = []
    let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)

    init(
        loop: EventLoop, configuration: HTTP2ClientConfiguration, tlsContext: TLSClientContext?, loopCount: Int,
        connectionCount: ConnectionCounter
    ) {
        self.loop = loop
        self.configuration = configuration
        self.tlsContext = tlsContext
        self.connectionCount = connectionCount
        maxConnectionsPerPool = configuration.maxConnectionsPerTarget.map { max(1, ($0 + loopCount - 1) / loopCount) } ?? Int.max
    }

    deinit { readBuffer.deallocate() }

    func start(_ stream: HTTP2ClientStream, target: HTTP2Target) {
        let pool: HTTP2ClientPool
        if let existing = pools[target] {
            pool = existing
        } else {
            pool = HTTP2ClientPool(target: target, context: self)
            pools[target] = pool
        }
        stream.begin(on: loop, pool: pool)
        pool.enqueue(stream)
    }

    func enqueueFlush(_ connection: HTTP2ClientConnection) { pendingFlush.append(connection) }

    func enqueuePump(_ pool: HTTP2ClientPool) { pendingPumps.append(pool) }

    func iterationEnd() {
        // Pumps first: the streams they start are flushed in the same iteration.
        while !pendingPumps.isEmpty {
            let batch = pendingPumps
            pendingPumps.removeAll(keepingCapacity: true)
            for pool in batch { pool.pump() }
        }
        guard !pendingFlush.isEmpty else { return }
        let batch = pendingFlush
        pendingFlush.removeAll(keepingCapacity: true)
        for connection in batch { connection.flushNow() }
    }

    func dropConnections(reason: String) {
        for pool in pools.values { pool.closeConnections(reason: reason) }
    }

    func closeAll() {
        for pool in pools.values { pool.closeAll(reason: "the client shut down") }
        pools.removeAll()
    }
}

final class ConnectionCounter: Sendable {
    let value = Atomic<Int>(0)
}
