import CLinux
import Glibc
import Logging
import SluiceIO
import SluiceWire
import Synchronization

public struct HTTP2ServerConfiguration: Sendable {
    public struct Limits: Sendable {
        /// Advertised as SETTINGS_MAX_CONCURRENT_STREAMS.
        public var maxStreamsPerConnection = 1000
        /// Advertised as SETTINGS_MAX_HEADER_LIST_SIZE and enforced per request.
        public var maxHeaderListSize = 16 * 1024
        /// Largest request message accepted; larger ones fail with RESOURCE_EXHAUSTED.
        public var maxMessageSize = EnvelopeDecoder.defaultMaxMessageSize
        /// Bytes a stream may queue for a slow reader before its handler's writes suspend.
        public var streamQueueBytes = 64 * 1024
        /// Client connections open at once, across all loops; more are accepted and closed at once.
        /// Running out of descriptors must not happen: libdispatch aborts the process when it cannot
        /// open /proc files for its thread pool.
        public var maxConnections = 10_000

        public init() {}
    }

    public var host = "127.0.0.1"
    /// 0 picks a free port (tests); `HTTP2Server.port` tells which.
    public var port = 8080
    public var eventLoops = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    public var tlsCertificatePath: String?
    public var tlsPrivateKeyPath: String?
    /// Connections without open streams for this long are closed with GOAWAY, and so are those whose
    /// client has let its flow-control window hold up a response for this long (it stopped reading).
    public var idleTimeout: Duration = .seconds(120)
    public var limits = Limits()
    /// Response messages this long or longer are gzip-compressed for clients that accept gzip; shorter ones
    /// (a text delta) would grow and cost CPU.
    public var compressMinBytes = 1024
    /// Which browser origins may call the server (CORS).
    public var cors = CORSPolicy()
    /// Called on a loop thread for each response message written with a `since` instant, with the time from
    /// it until the message's last byte was copied into a DATA frame that the connection writes at once. The
    /// time includes waiting for a slow client (backpressure, flow control); a message dropped with its call
    /// (reset, deadline) is not reported.
    public var messageDelivered: (@Sendable (Duration) -> Void)?

    public init() {}
}

/// The HTTP/2 server, which also answers HTTP/1.1 on the same port (`HTTP1Connection`): one
/// listening socket per event loop (SO_REUSEPORT lets the kernel spread connections), each
/// connection owned by the loop that accepted it.
public final class HTTP2Server: @unchecked Sendable {
    public let configuration: HTTP2ServerConfiguration
    let router: RPCRouter
    let logger: Logger
    private let tlsContext: TLSContext?
    private let loops: [EventLoop]
    private var contexts: [LoopContext] = []
    public private(set) var port = 0
    private let shutdownState = LockedValue(ShutdownState())
    /// Connections open across all loops (for `maxConnections`).
    let openConnections = Atomic<Int>(0)
    /// Running RPC calls per loop index, by the loop their work was placed on.
    private let callsPerLoop: LockedValue<[Int]>

    private struct ShutdownState {
        var started = false
        var loopsWithConnections = 0
        var waiters: [CheckedContinuation<Void, Never>] = []
        var stopped = false
        var runningLoops = 0
        /// `holdLoops` calls not yet matched by `releaseLoops` (all released at the drain timeout).
        var loopHolds = 0
        var stopping = false

        /// Every loop has drained and nothing holds them: stop them (true once).
        mutating func shouldStop() -> Bool {
            guard started, loopsWithConnections == 0, loopHolds == 0, !stopping else { return false }
            stopping = true
            return true
        }
    }

    /// - Parameter loops: loops to serve on, created but not started (other work, such as upstream
    ///   transfers, may share them); by default the server makes `configuration.eventLoops` of its own.
    ///   The server starts them, and stops them once it has shut down.
    public init(configuration: HTTP2ServerConfiguration, router: RPCRouter, logger: Logger, loops: [EventLoop]? = nil) throws {
        self.configuration = configuration
        self.router = router
        self.logger = logger
        self.loops = try loops ?? (0..<configuration.eventLoops).map { try EventLoop(index: $0) }
        callsPerLoop = LockedValue(Array(repeating: 0, count: self.loops.count))
        precondition(self.loops.enumerated().allSatisfy { $0.offset == $0.element.index }, "loop indices must be 0, 1, 2, …")
        switch (configuration.tlsCertificatePath, configuration.tlsPrivateKeyPath) {
        case (let certificate?, let key?): tlsContext = try TLSContext(certificatePath: certificate, privateKeyPath: key)
        case (nil, nil): tlsContext = nil
        default: throw IOError.configuration("TLS needs both a certificate chain and a private key")
        }
    }

    public var isTLS: Bool { tlsContext != nil }

    /// True once shutdown has begun (readiness probes then fail).
    public var isDraining: Bool { shutdownState.withLock { $0.started } }

    /// Binds and starts every loop. Throws if the address cannot be bound.
    public func start() throws {
        var boundPort = configuration.port
        for loop in loops {
            let listenFD = try Self.listen(host: configuration.host, port: boundPort)
            if boundPort == 0 { boundPort = Self.localPort(listenFD) }
            let context = LoopContext(loop: loop, server: self, listenFD: listenFD)
            loop.onIterationEnd = { [weak context] in context?.flushPending() }
            contexts.append(context)
        }
        port = boundPort
        // Peers that vanish make writes fail with EPIPE; the default SIGPIPE would kill the process.
        signal(SIGPIPE, SIG_IGN)
        shutdownState.withLock { $0.runningLoops = loops.count }
        for (loop, context) in zip(loops, contexts) {
            loop.start { [weak self] in self?.loopExited() }
            let bound = LoopBound(context, loop: context.loop)
            loop.execute { bound.value.startListening() }
        }
    }

    /// Stops accepting, lets in-flight calls finish for up to `drainTimeout`, then ends the
    /// rest with UNAVAILABLE and stops the loops. Returns when every connection is closed.
    public func shutdown(drainTimeout: Duration) async {
        let first = shutdownState.withLock { state in
            defer { state.started = true }
            if !state.started { state.loopsWithConnections = contexts.count }
            return !state.started
        }
        if first {
            for context in contexts {
                let bound = LoopBound(context, loop: context.loop)
                context.loop.execute { bound.value.beginDrain(drainTimeout: drainTimeout) }
            }
        }
        await waitUntilStopped()
    }

    public func waitUntilStopped() async {
        await withCheckedContinuation { continuation in
            let done = shutdownState.withLock { state in
                if state.stopped { return true }
                state.waiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Called by a draining loop once it has no connections left; the last one stops every loop, unless work that
    /// runs on them holds them (`holdLoops`).
    fileprivate func loopDrained() {
        if shutdownState.withLock({ state in
            state.loopsWithConnections -= 1
            return state.shouldStop()
        }) {
            for loop in loops { loop.stop() }
        }
    }

    /// Keeps the loops running once the last connection has closed, until `releaseLoops`, or at most until the drain
    /// timeout: for work on them that must end before the process does (the engine's hand-off waits for Redis on
    /// them). Call it before `shutdown`.
    public func holdLoops() {
        shutdownState.withLock { $0.loopHolds += 1 }
    }

    public func releaseLoops() {
        if shutdownState.withLock({ state in
            state.loopHolds = max(0, state.loopHolds - 1)
            return state.shouldStop()
        }) {
            for loop in loops { loop.stop() }
        }
    }

    /// The drain timeout passed: nothing holds the loops any longer.
    fileprivate func drainTimedOut() {
        if shutdownState.withLock({ state in
            state.loopHolds = 0
            return state.shouldStop()
        }) {
            for loop in loops { loop.stop() }
        }
    }

    /// Runs on each loop's thread as it ends; the last one releases the waiters, so nothing of the
    /// server runs after `shutdown` returns.
    private func loopExited() {
        let waiters = shutdownState.withLock { state -> [CheckedContinuation<Void, Never>]? in
            state.runningLoops -= 1
            guard state.runningLoops == 0 else { return nil }
            state.stopped = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters ?? [] { waiter.resume() }
    }

    // MARK: Placing work

    /// The loop for a new call's work: the connection's own unless another runs fewer calls, so a
    /// client that multiplexes everything over one connection still gets every core. Pair with
    /// `callEnded(on:)`.
    func placeCall(preferring home: EventLoop) -> EventLoop {
        callsPerLoop.withLock { counts in
            var chosen = home.index
            for index in counts.indices where counts[index] < counts[chosen] { chosen = index }
            counts[chosen] += 1
            return loops[chosen]
        }
    }

    func callEnded(on loop: EventLoop) {
        callsPerLoop.withLock { $0[loop.index] -= 1 }
    }

    // MARK: Called by connections on their loop

    func readBuffer(for loop: EventLoop) -> UnsafeMutableRawBufferPointer { contexts[loop.index].readBuffer }
    func enqueueFlush(_ connection: HTTP2Connection, on loop: EventLoop) { contexts[loop.index].pendingFlush.append(connection) }
    func connectionClosed(_ connection: HTTP2Connection, on loop: EventLoop) { contexts[loop.index].remove(connection) }
    func connectionClosed(_ connection: HTTP1Connection, on loop: EventLoop) { contexts[loop.index].remove(connection) }

    /// The client turned out to speak HTTP/1.x: `io` (and the connection's slot) pass to an
    /// `HTTP1Connection`, which parses `bytes` first.
    func switchToHTTP1(_ connection: HTTP2Connection, io: SessionIO, replaying bytes: [UInt8], on loop: EventLoop) {
        contexts[loop.index].switchToHTTP1(connection, io: io, replaying: bytes)
    }

    // MARK: Sockets

    private static func listen(host: String, port: Int) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var result: UnsafeMutablePointer<addrinfo>?
        let rv = getaddrinfo(host, String(port), &hints, &result)
        guard rv == 0, let info = result else {
            throw IOError.configuration("cannot resolve listen address \(host): \(String(cString: gai_strerror(rv)))")
        }
        defer { freeaddrinfo(result) }
        let fd = socket(
            info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw IOError.system("socket", errno) }
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            let code = errno
            close(fd)
            throw IOError.configuration(
                "cannot listen on \(host):\(port): \(String(cString: strerror(code))). Choose another port or stop what holds it.")
        }
        guard Glibc.listen(fd, 4096) == 0 else {
            let code = errno
            close(fd)
            throw IOError.system("listen", code)
        }
        return fd
    }

    private static func localPort(_ fd: Int32) -> Int {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &length) }
        }
        let family = storage.ss_family
        let portBigEndian: UInt16 = withUnsafeBytes(of: &storage) { raw in
            family == sa_family_t(AF_INET6)
                ? raw.load(fromByteOffset: MemoryLayout<sockaddr_in6>.offset(of: \.sin6_port)!, as: UInt16.self)
                : raw.load(fromByteOffset: MemoryLayout<sockaddr_in>.offset(of: \.sin_port)!, as: UInt16.self)
        }
        return Int(UInt16(bigEndian: portBigEndian))
    }

    fileprivate var tls: TLSContext? { tlsContext }
}

/// Per-loop server state: the listener, its connections, and writes to coalesce.
private final class LoopContext: Selectable {
    unowned let loop: EventLoop
    unowned let server: HTTP2Server
    private var listenFD: Int32
    private var connections: [ObjectIdentifier: HTTP2Connection] = [:]
    private var http1Connections: [ObjectIdentifier: HTTP1Connection] = [:]
    var pendingFlush: [HTTP2Connection] = []
    let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
    private var draining = false
    private var reportedDrained = false
    private var acceptPaused = false

    init(loop: EventLoop, server: HTTP2Server, listenFD: Int32) {
        self.loop = loop
        self.server = server
        self.listenFD = listenFD
    }

    deinit { readBuffer.deallocate() }

    func startListening() {
        do {
            try loop.register(listenFD, self, events: EPOLLIN.rawValue)
        } catch {
            server.logger.critical("cannot watch the listening socket: \(error)")
        }
        scheduleIdleSweep()
    }

    /// Accepts every pending connection.
    func handleEvents(_ events: UInt32) {
        while listenFD >= 0 {
            let fd = accept(listenFD, nil, nil)
            if fd < 0 {
                let code = errno
                if code == EINTR { continue }
                if code == EMFILE || code == ENFILE || code == ENOBUFS || code == ENOMEM {
                    pauseAccepting(because: code)
                } else if code != EAGAIN && code != EWOULDBLOCK {
                    server.logger.warning("accept failed: \(String(cString: strerror(code)))")
                }
                return
            }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            var on: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
            do {
                guard server.openConnections.add(1, ordering: .relaxed).newValue <= server.configuration.limits.maxConnections else {
                    server.openConnections.subtract(1, ordering: .relaxed)
                    close(fd)
                    reportShedding()
                    continue
                }
                // Nothing is sent before the client speaks: an HTTP/1.1 client gets only HTTP/1.1.
                let connection = try HTTP2Connection(fd: fd, loop: loop, server: server, tlsContext: server.tls)
                connections[ObjectIdentifier(connection)] = connection
            } catch {
                server.openConnections.subtract(1, ordering: .relaxed)
                server.logger.warning("cannot set up a connection: \(error)")
                close(fd)
            }
        }
    }

    private var lastShedReport: ContinuousClock.Instant?

    private func reportShedding() {
        let now = ContinuousClock.now
        if let last = lastShedReport, now - last < .seconds(10) { return }
        lastShedReport = now
        server.logger.warning(
            "closing new connections: \(server.configuration.limits.maxConnections) are open, the limit of client connections; raise it together with the open-file limit"
        )
    }

    /// Out of descriptors or memory: the pending connection stays in the backlog and the listener
    /// stays readable, so keep accepting would spin. Stop watching it for a moment instead.
    private func pauseAccepting(because code: Int32) {
        guard !acceptPaused else { return }
        acceptPaused = true
        server.logger.warning(
            "accept failed: \(String(cString: strerror(code))); pausing new connections for 100ms (raise the open-file limit or lower the load)"
        )
        loop.deregister(listenFD)
        loop.scheduleTimer(after: .milliseconds(100)) { [weak self] in
            guard let self, self.listenFD >= 0 else { return }
            self.acceptPaused = false
            try? self.loop.register(self.listenFD, self, events: EPOLLIN.rawValue)
        }
    }

    func flushPending() {
        guard !pendingFlush.isEmpty else { return }
        let batch = pendingFlush
        pendingFlush.removeAll(keepingCapacity: true)
        for connection in batch { connection.flushNow() }
    }

    func remove(_ connection: HTTP2Connection) {
        if connections.removeValue(forKey: ObjectIdentifier(connection)) != nil {
            server.openConnections.subtract(1, ordering: .relaxed)
        }
        reportIfDrained()
    }

    func remove(_ connection: HTTP1Connection) {
        if http1Connections.removeValue(forKey: ObjectIdentifier(connection)) != nil {
            server.openConnections.subtract(1, ordering: .relaxed)
        }
        reportIfDrained()
    }

    func switchToHTTP1(_ connection: HTTP2Connection, io: SessionIO, replaying bytes: [UInt8]) {
        guard connections.removeValue(forKey: ObjectIdentifier(connection)) != nil else { return io.release() }
        let http1 = HTTP1Connection(io: io, loop: loop, server: server)
        http1Connections[ObjectIdentifier(http1)] = http1
        http1.start(replaying: bytes)
        if draining { http1.beginDrain() }
    }

    // MARK: Idle connections

    private func scheduleIdleSweep() {
        loop.scheduleTimer(after: .seconds(1)) { [weak self] in
            guard let self, !self.draining else { return }
            let now = ContinuousClock.now
            let cutoff = now - self.server.configuration.idleTimeout
            for connection in self.connections.values {
                if connection.activeStreamCount == 0 {
                    if connection.lastActivity < cutoff { connection.sendGoAway() }
                } else if connection.isBlockedByClientWindow {
                    // Stalled for the idle timeout too: the client stopped reading.
                    let since = connection.windowBlockedSince ?? now
                    connection.windowBlockedSince = since
                    if since < cutoff { connection.closeStalled() }
                } else {
                    connection.windowBlockedSince = nil
                }
            }
            for connection in self.http1Connections.values { connection.closeIfIdle(before: cutoff) }
            self.scheduleIdleSweep()
        }
    }

    // MARK: Graceful shutdown

    func beginDrain(drainTimeout: Duration) {
        draining = true
        if !acceptPaused { loop.deregister(listenFD) }
        close(listenFD)
        listenFD = -1
        for connection in connections.values { connection.sendShutdownNotice() }
        for connection in http1Connections.values { connection.beginDrain() }
        // About one round trip later, the real GOAWAY with the last stream we processed.
        loop.scheduleTimer(after: .milliseconds(100)) { [weak self] in
            guard let self else { return }
            for connection in self.connections.values { connection.sendGoAway() }
        }
        loop.scheduleTimer(after: drainTimeout) { [weak self] in
            guard let self else { return }
            let message =
                "the server is shutting down and its drain timeout (\(DurationParsing.format(drainTimeout))) has passed: retry the call"
            let open = self.connections.values.reduce(0) { $0 + $1.streams.count } + self.http1Connections.count
            if open > 0 {
                self.server.logger.warning(
                    "the drain timeout has passed: ending the calls still open",
                    metadata: ["loop": "\(self.loop.index)", "calls": "\(open)"])
            }
            for connection in self.connections.values {
                for stream in connection.streams.values { stream.end(.unavailable, message) }
                connection.flushNow()
            }
            for connection in self.http1Connections.values { connection.abortResponse(message) }
            self.server.drainTimedOut()
            // Clients that do not read their final frames do not hold the process up.
            self.loop.scheduleTimer(after: .seconds(1)) { [weak self] in
                guard let self else { return }
                for connection in self.connections.values { connection.close(reason: "shutdown") }
                for connection in self.http1Connections.values { connection.close(reason: "shutdown") }
            }
        }
        reportIfDrained()
    }

    private func reportIfDrained() {
        guard draining, connections.isEmpty, http1Connections.isEmpty, !reportedDrained else { return }
        reportedDrained = true
        server.loopDrained()
    }
}
