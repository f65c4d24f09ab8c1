import CHiredis
import CLinux
import Glibc
import Logging
import Metrics
import SluiceIO

/// One hiredis async connection, driven by a Sluice event loop: the shell of `RedisConnectionStateMachine`.
///
/// hiredis asks for read and write readiness through its `ev` hooks (`addRead`, `delRead`, `addWrite`,
/// `delWrite`, `cleanup`); this adapter turns them into `EventLoop.watch` interest on the context's socket and calls
/// `redisAsyncHandleRead`/`redisAsyncHandleWrite` when epoll reports it ready, as hiredis's libevent and ae
/// adapters do with their loops. No extra threads.
///
/// hiredis asks for write readiness with every command and for read readiness after every read. Once connected,
/// neither becomes an `epoll_ctl`: read interest stays on, and commands issued while the loop runs its tasks sit in
/// hiredis's output buffer until a task queued with the first of them writes them (`flush`), as one pipeline, before
/// the loop waits again (not an iteration later, when epoll would report the socket writable). Write interest is
/// taken only while connecting and while the socket does not take the whole pipeline.
///
/// Loop-confined: every method runs on `loop` (asserted), and hiredis calls back only from inside the calls made
/// here.
public final class RedisConnection: @unchecked Sendable {
    public typealias Command = RedisConnectionStateMachine.Command

    public let loop: EventLoop
    public let endpoint: RedisEndpoint
    private let logger: Logger
    private var machine: RedisConnectionStateMachine
    private var context: UnsafeMutablePointer<redisAsyncContext>?
    private var watchedFD: Int32 = -1
    /// The epoll interest registered for `watchedFD` (EPOLLIN, EPOLLOUT).
    private var watchedEvents: UInt32 = 0
    private var wantsRead = false
    /// Output waits for the socket's write readiness: connecting, or the socket did not take the whole pipeline.
    private var waitsForWritable = false
    /// A task to write hiredis's output buffer is queued on the loop.
    private var flushQueued = false
    /// Inside `redisAsyncHandleWrite`: hiredis asking for write readiness now means the socket is full.
    private var writing = false
    /// Lua scripts loaded (`SCRIPT LOAD`) on every new connection before any queued command goes out, so the queue's
    /// `EVALSHA`s of them find them even after Redis restarted.
    private let scripts: [String]
    /// The handshake commands (AUTH, SELECT, SCRIPT LOAD, PING) still awaiting their replies; the connection is up
    /// after the last.
    private var handshake: [String] = []
    private var reconnectTimer: TimerID?
    /// Commands handed to hiredis since its last write: the next write sends them as one pipeline.
    private var issuedSinceWrite = 0
    private let latency = Timer(label: "sluice_store_latency_seconds")
    private let pipelineSize = Recorder(label: "sluice_store_pipeline_commands")
    /// A failed attempt of the current series was logged as a warning.
    private var reportedFailure = false

    /// Each acknowledged command with its reply (an error reply included), in the order they were sent. The reply is
    /// hiredis's, valid during the call only: a write's acknowledgement copies nothing unless it is an error.
    private let onReply: (Command, RedisReplyView) -> Void
    /// Commands dropped because the queue was full (or the connection closed) before they could be sent.
    private let onDropped: ([Command]) -> Void
    /// The connection became usable, or stopped being usable.
    private let onUpChanged: (Bool) -> Void
    /// On a subscriber connection (`sendPubSub`): its (un)subscribe confirmations and published messages.
    private let onPush: (RedisReply) -> Void
    /// Runs just before each pipeline is written: what it sends joins that pipeline.
    private let beforeWrite: () -> Void

    public init(
        loop: EventLoop, endpoint: RedisEndpoint, maxQueuedBytes: Int, backoff: RedisConnectionStateMachine.Backoff = .init(),
        scripts: [String] = [], logger: Logger, onReply: @escaping (Command, RedisReplyView) -> Void,
        onDropped: @escaping ([Command]) -> Void, onUpChanged: @escaping (Bool) -> Void, onPush: @escaping (RedisReply) -> Void = { _ in },
        beforeWrite: @escaping () -> Void = {}
    ) {
        self.loop = loop
        self.scripts = scripts
        self.endpoint = endpoint
        self.logger = logger
        self.machine = RedisConnectionStateMachine(maxQueuedBytes: maxQueuedBytes, backoff: backoff)
        self.onReply = onReply
        self.onDropped = onDropped
        self.onUpChanged = onUpChanged
        self.onPush = onPush
        self.beforeWrite = beforeWrite
    }

    public var state: RedisConnectionStateMachine.State {
        assertInLoop()
        return machine.state
    }

    public var queuedCount: Int {
        assertInLoop()
        return machine.queuedCount
    }

    public func start() {
        assertInLoop()
        perform(machine.start())
    }

    /// Queues `command`; its reply comes to `onReply`.
    public func send(_ command: Command) {
        assertInLoop()
        switch machine.enqueue(command) {
        case .queued: break
        case .send(let command):
            guard let context else { preconditionFailure("RedisConnection: a command to send with no connection") }
            issue(context, command)
        case .dropped(let command): onDropped([command])
        }
    }

    /// Sends SUBSCRIBE or UNSUBSCRIBE (`arguments`) at once, outside the queue: a subscriber's subscriptions are not
    /// replayed after a reconnect (its owner re-makes them, see `RedisSubscriptionStateMachine`). Confirmations and
    /// messages go to `onPush`. False when the connection is not up.
    @discardableResult
    public func sendPubSub(_ arguments: [String]) -> Bool {
        assertInLoop()
        guard let context, machine.state == .up else { return false }
        issue(context, arguments.map { Array($0.utf8) }, replyTo: .push)
        return true
    }

    /// Closes the connection; queued commands are dropped.
    public func close() {
        assertInLoop()
        if let reconnectTimer { loop.cancelTimer(reconnectTimer) }
        reconnectTimer = nil
        perform(machine.close())
    }

    private func assertInLoop() {
        assert(loop.inEventLoop || !loop.isRunning, "RedisConnection used off its event loop's thread")
    }

    private func perform(_ actions: [RedisConnectionStateMachine.Action]) {
        for action in actions {
            switch action {
            case .connect:
                openContext()
            case .send(let commands):
                guard let context else { preconditionFailure("RedisConnection: commands to send with no connection") }
                for command in commands { issue(context, command) }
            case .scheduleReconnect(let delay):
                reconnectTimer = loop.scheduleTimer(after: delay) { [weak self] in
                    guard let self else { return }
                    reconnectTimer = nil
                    perform(machine.backoffElapsed())
                }
            case .reportUp(let up):
                onUpChanged(up)
            case .dropped(let commands):
                onDropped(commands)
            case .disconnect:
                // Frees the context now; its pending callbacks get no reply (ignored) and `cleanup` unwatches the socket.
                if let context { redisAsyncFree(context) }
            }
        }
    }

    // MARK: hiredis

    private func openContext() {
        guard let context = redisAsyncConnect(endpoint.host, Int32(endpoint.port)) else {
            connectFailed("out of memory")
            perform(machine.connectionLost())
            return
        }
        if context.pointee.err != 0 {
            connectFailed(String(cString: context.pointee.errstr))
            redisAsyncFree(context)
            perform(machine.connectionLost())
            return
        }
        let me = Unmanaged.passUnretained(self).toOpaque()
        context.pointee.data = me
        context.pointee.ev.data = me
        context.pointee.ev.addRead = { RedisConnection.from($0).setReadInterest(true) }
        context.pointee.ev.delRead = { RedisConnection.from($0).setReadInterest(false) }
        context.pointee.ev.addWrite = { RedisConnection.from($0).outputPending() }
        context.pointee.ev.delWrite = { RedisConnection.from($0).outputWritten() }
        context.pointee.ev.cleanup = { RedisConnection.from($0).contextFreed() }
        _ = redisAsyncSetConnectCallback(context) { context, status in
            guard status != REDIS_OK, let context else { return }
            RedisConnection.from(context.pointee.data).connectFailed(String(cString: context.pointee.errstr))
        }
        _ = redisAsyncSetDisconnectCallback(context) { context, status in
            guard status != REDIS_OK, let context else { return }
            let connection = Unmanaged<RedisConnection>.fromOpaque(context.pointee.data).takeUnretainedValue()
            connection.logger.warning(
                "lost the connection to the Redis store; reconnecting with backoff",
                metadata: ["store": "\(connection.endpoint)", "error": "\(String(cString: context.pointee.errstr))"])
        }
        self.context = context
        // hiredis 0.14 notices the connect completing only on write readiness: the handshake's commands ask for it.
        var steps: [(String, [String])] = []
        if let password = endpoint.password {
            steps.append(("AUTH", endpoint.user.map { ["AUTH", $0, password] } ?? ["AUTH", password]))
        }
        if endpoint.database != 0 { steps.append(("SELECT", ["SELECT", "\(endpoint.database)"])) }
        for script in scripts { steps.append(("SCRIPT LOAD", ["SCRIPT", "LOAD", script])) }
        steps.append(("PING", ["PING"]))
        handshake = steps.map(\.0)
        for (_, arguments) in steps { issue(context, arguments.map { Array($0.utf8) }, replyTo: .handshake) }
    }

    fileprivate static func from(_ pointer: UnsafeMutableRawPointer?) -> RedisConnection {
        Unmanaged<RedisConnection>.fromOpaque(pointer!).takeUnretainedValue()
    }

    /// A reply to a command (`handshake`: to AUTH, SELECT or PING on a new connection).
    fileprivate func received(_ reply: UnsafeMutableRawPointer?, context: UnsafeMutablePointer<redisAsyncContext>?, handshake: Bool) {
        // No reply: the context is being freed (the connection dropped); a command is sent again after reconnecting.
        guard let reply, let context else { return }
        let view = RedisReplyView(reply.assumingMemoryBound(to: redisReply.self))
        guard handshake else {
            let command = machine.replied()
            let (seconds, attoseconds) = (ContinuousClock.now - command.queuedAt).components
            latency.recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
            onReply(command, view)
            return
        }
        let value = view.copy()
        // Emptied by a refused step: the connection is closing, and later steps' errors say nothing new.
        guard !self.handshake.isEmpty else { return }
        let step = self.handshake.removeFirst()
        if case .error(let message) = value {
            self.handshake = []
            logger.error(
                "the Redis store refused \(step); check --store, its password and the user's permissions",
                metadata: ["store": "\(endpoint)", "error": "\(message)"])
            redisAsyncDisconnect(context)
            return
        }
        if self.handshake.isEmpty {
            reportedFailure = false
            perform(machine.connected())
        }
    }

    /// Where a command's replies go.
    private enum ReplyRoute {
        /// The connection's own AUTH, SELECT, SCRIPT LOAD and PING.
        case handshake
        /// `onPush`: (un)subscribe confirmations and messages, which hiredis routes by channel.
        case push
    }

    /// A pub/sub reply or message (nil when the context is being freed).
    fileprivate func pushed(_ reply: UnsafeMutableRawPointer?) {
        guard let reply else { return }
        onPush(RedisReply(reply.assumingMemoryBound(to: redisReply.self)))
    }

    /// Hands a queued command to hiredis as it is encoded (hiredis copies it into its output buffer).
    private func issue(_ context: UnsafeMutablePointer<redisAsyncContext>, _ command: Command) {
        assert(command.isComplete, "a Redis command sent with fewer arguments than its header announced")
        issuedSinceWrite += 1
        let me = Unmanaged.passUnretained(self).toOpaque()
        command.encoded.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { bytes in
                // Fails only while hiredis is disconnecting this context: the command then goes out after reconnecting.
                _ = redisAsyncFormattedCommand(context, redisCommandReplied, me, bytes.baseAddress, bytes.count)
            }
        }
    }

    /// Hands a handshake or pub/sub command's `arguments` to hiredis (which formats them into its output buffer).
    private func issue(_ context: UnsafeMutablePointer<redisAsyncContext>, _ arguments: [[UInt8]], replyTo route: ReplyRoute) {
        var flat: [UInt8] = []
        flat.reserveCapacity(arguments.reduce(1) { $0 + $1.count })
        var lengths: [Int] = []
        for argument in arguments {
            flat += argument
            lengths.append(argument.count)
        }
        flat.append(0)
        let me = Unmanaged.passUnretained(self).toOpaque()
        issuedSinceWrite += 1
        flat.withUnsafeBufferPointer { buffer in
            let base = UnsafeRawPointer(buffer.baseAddress!).assumingMemoryBound(to: CChar.self)
            var pointers: [UnsafePointer<CChar>?] = []
            var offset = 0
            for length in lengths {
                pointers.append(base + offset)
                offset += length
            }
            // Fails only while hiredis is disconnecting this context: the command then goes out after reconnecting.
            switch route {
            case .handshake: _ = redisAsyncCommandArgv(context, redisHandshakeReplied, me, Int32(arguments.count), &pointers, lengths)
            case .push: _ = redisAsyncCommandArgv(context, redisPushReceived, me, Int32(arguments.count), &pointers, lengths)
            }
        }
    }

    private func setReadInterest(_ read: Bool) {
        wantsRead = read
        updateInterest()
    }

    /// hiredis has output to write (it says so for every command, and after a partial write).
    private func outputPending() {
        guard let context, !waitsForWritable else { return }
        // Connecting (hiredis learns that the connect finished from write readiness), or the socket is full.
        if writing || context.pointee.c.flags & REDIS_CONNECTED == 0 {
            waitsForWritable = true
            updateInterest()
            return
        }
        guard !flushQueued else { return }
        flushQueued = true
        // Runs after the tasks queued before it: every command they issue goes out in this write.
        loop.execute { [weak self] in self?.flush() }
    }

    /// hiredis's output buffer is empty.
    private func outputWritten() {
        guard waitsForWritable else { return }
        waitsForWritable = false
        updateInterest()
    }

    private func flush() {
        // Commands sent from `beforeWrite` join this write rather than queue another.
        beforeWrite()
        flushQueued = false
        guard let context, !waitsForWritable else { return }
        write(context)
    }

    private func write(_ context: UnsafeMutablePointer<redisAsyncContext>) {
        if issuedSinceWrite > 0 { pipelineSize.record(issuedSinceWrite) }
        issuedSinceWrite = 0
        writing = true
        // May free the context (a write error): `contextFreed` then clears it.
        redisAsyncHandleWrite(context)
        writing = false
    }

    /// Registers the interest wanted, with an `epoll_ctl` only when it changes.
    private func updateInterest() {
        guard let context else { return }
        let fd = context.pointee.c.fd
        let events = (wantsRead ? EPOLLIN.rawValue : 0) | (waitsForWritable ? EPOLLOUT.rawValue : 0)
        guard fd != watchedFD || events != watchedEvents else { return }
        if watchedFD >= 0, fd != watchedFD || events == 0 {
            loop.unwatch(watchedFD)
            watchedFD = -1
            watchedEvents = 0
        }
        guard events != 0 else { return }
        if watchedFD == fd {
            loop.modify(fd, events: events)
        } else {
            watchedFD = fd
            loop.watch(fd, events: events) { [unowned self] ready in readiness(ready) }
        }
        watchedEvents = events
    }

    private func readiness(_ ready: UInt32) {
        if ready & (EPOLLIN.rawValue | EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0, let context {
            redisAsyncHandleRead(context)
        }
        if ready & (EPOLLOUT.rawValue | EPOLLERR.rawValue) != 0, waitsForWritable, let context {
            // Connected: the rest of a pipeline the socket did not take, with whatever joined it since.
            if context.pointee.c.flags & REDIS_CONNECTED != 0 { beforeWrite() }
            write(context)
        }
    }

    /// Logged as a warning once per series of failed attempts (they repeat with the backoff), then at debug level.
    private func connectFailed(_ error: String) {
        let message: Logger.Message = "cannot connect to the Redis store; retrying with backoff"
        let metadata: Logger.Metadata = ["store": "\(endpoint)", "error": "\(error)"]
        if reportedFailure {
            logger.debug(message, metadata: metadata)
        } else {
            logger.warning(message, metadata: metadata)
        }
        reportedFailure = true
    }

    /// hiredis is freeing the context (an error, a disconnect, or `close`).
    private func contextFreed() {
        if watchedFD >= 0 { loop.unwatch(watchedFD) }
        watchedFD = -1
        watchedEvents = 0
        wantsRead = false
        waitsForWritable = false
        context = nil
        handshake = []
        perform(machine.connectionLost())
    }
}

// hiredis's reply callbacks (C function pointers: no captures; `privdata` is the connection).
private func redisCommandReplied(
    _ context: UnsafeMutablePointer<redisAsyncContext>?, _ reply: UnsafeMutableRawPointer?, _ privdata: UnsafeMutableRawPointer?
) {
    Unmanaged<RedisConnection>.fromOpaque(privdata!).takeUnretainedValue().received(reply, context: context, handshake: false)
}

private func redisHandshakeReplied(
    _ context: UnsafeMutablePointer<redisAsyncContext>?, _ reply: UnsafeMutableRawPointer?, _ privdata: UnsafeMutableRawPointer?
) {
    Unmanaged<RedisConnection>.fromOpaque(privdata!).takeUnretainedValue().received(reply, context: context, handshake: true)
}

private func redisPushReceived(
    _ context: UnsafeMutablePointer<redisAsyncContext>?, _ reply: UnsafeMutableRawPointer?, _ privdata: UnsafeMutableRawPointer?
) {
    Unmanaged<RedisConnection>.fromOpaque(privdata!).takeUnretainedValue().pushed(reply)
}
