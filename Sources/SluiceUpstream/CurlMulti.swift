import CCurl
import CLinux
import Glibc
import Logging
import SluiceIO
import SluiceWire
import Synchronization

/// `curl_global_init` is not thread-safe in libcurl 7.88: run it once, before the first multi handle.
private let curlGlobalInitResult: CURLcode = curl_global_init(Int(CURL_GLOBAL_DEFAULT))

/// One libcurl multi handle, driven with `curl_multi_socket_action` on an event loop: libcurl's sockets and timer
/// are the loop's, so each wakeup costs work only for the sockets and transfers that have something to do
/// (`curl_multi_perform` walks every transfer every time), and on a server loop an upstream event reaches the
/// stream's job and its client's connection without leaving the thread.
///
/// Threading: everything but `submit`, `cancel`, the two shutdowns and the atomics is confined to the loop's thread;
/// those hand their work to the loop with `execute`. Once the loop has exited, a shutdown cleans up on the caller's
/// thread instead.
final class CurlMulti: @unchecked Sendable {
    let configuration: UpstreamConfiguration
    let logger: Logger
    let loop: EventLoop
    let openTransfers = Atomic<Int>(0)
    let slowConsumerAborts = Atomic<Int>(0)

    private let multiHandle: UnsafeMutableRawPointer
    /// Without a trailing slash; a transfer appends its path.
    private let baseURL: String
    private let httpVersion: Int
    /// libcurl before 8.0.0 cannot reuse or multiplex cleartext prior-knowledge HTTP/2 connections: a second
    /// transfer on one fails with CURLE_HTTP2 "Error in the HTTP2 framing layer" (curl issue 10634, fixed by
    /// curl PR 10643 in 8.0.0; Debian 12's 7.88.1 has it). For `http://` base URLs (the simulator) such versions
    /// get one connection per transfer instead. `https://` (ALPN) is unaffected and always multiplexes.
    let connectionPerTransfer: Bool
    private let lifecycle = LockedValue(Lifecycle.running)

    private enum Lifecycle {
        case running
        /// `shutdown` has begun: new submissions fail at once.
        case stopping
        /// The multi handle is cleaned up.
        case closed
    }

    // Loop-confined state.
    private var active: [ObjectIdentifier: CurlTransfer] = [:]
    /// The sockets libcurl asked to watch, with their epoll event masks.
    private var watchedSockets: [Int32: UInt32] = [:]
    /// libcurl's timer: when it wants `curl_multi_socket_action(CURL_SOCKET_TIMEOUT)`, and the loop timer armed for it.
    private var curlTimer: (id: TimerID, at: ContinuousClock.Instant)?
    /// libcurl asked for its timeout action now: a loop task will run it.
    private var timeoutActionQueued = false

    init(configuration: UpstreamConfiguration, logger: Logger, loop: EventLoop) throws(UpstreamConfigurationError) {
        guard curlGlobalInitResult == CURLE_OK else {
            throw .invalid("curl_global_init failed: \(String(cString: curl_easy_strerror(curlGlobalInitResult)))")
        }
        var base = configuration.baseURL
        while base.hasSuffix("/") { base.removeLast() }
        let lowered = base.lowercased()
        if lowered.hasPrefix("https://") {
            httpVersion = Int(CURL_HTTP_VERSION_2TLS)
        } else if lowered.hasPrefix("http://") {
            httpVersion = Int(CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE)
        } else {
            throw .invalid("upstream base URL must start with https:// or http://: \(configuration.baseURL)")
        }
        guard configuration.maxBufferedBytes > 0, configuration.maxErrorBodyBytes >= 0,
            configuration.maxConcurrentStreams > 0
        else { throw .invalid("upstream buffer and stream limits must be positive") }
        if let key = configuration.apiKey, key.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) {
            throw .invalid("the Anthropic API key contains control characters")
        }
        guard let multi = curl_multi_init() else { throw .invalid("curl_multi_init failed") }
        _ = sluice_curl_multi_setopt_long(multi, CURLMOPT_PIPELINING, Int(CURLPIPE_MULTIPLEX))
        _ = sluice_curl_multi_setopt_long(multi, CURLMOPT_MAX_CONCURRENT_STREAMS, configuration.maxConcurrentStreams)
        // Connections kept once idle (libcurl's default grows with the transfers ever added): a burst's extra
        // connections, each with its TLS buffers, are closed as it ends instead of lingering.
        _ = sluice_curl_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, Self.idleConnectionsKept)
        self.multiHandle = multi
        self.loop = loop
        connectionPerTransfer = lowered.hasPrefix("http://") && Self.libcurlVersion < 0x08_00_00
        self.baseURL = base
        self.configuration = configuration
        self.logger = logger
        installCallbacks()
    }

    deinit {
        // Reached only when `shutdown` was never called and nothing is left that could use the handle.
        if lifecycle.withLock({ $0 }) != .closed { curl_multi_cleanup(multiHandle) }
    }

    static let idleConnectionsKept = 8

    /// The running libcurl's version as 0xXXYYZZ.
    static var libcurlVersion: UInt32 {
        curl_version_info(CURLVERSION_TENTH).map { UInt32($0.pointee.version_num) } ?? 0
    }

    // MARK: Any thread

    func submit(_ transfer: CurlTransfer) {
        guard lifecycle.withLock({ $0 == .running }), loop.execute({ self.start(transfer) }) else {
            transfer.channel.finish(.failure(UpstreamFailure(.cancelled, message: "the upstream client has shut down")))
            return
        }
    }

    /// The consumer is gone: remove the transfer from the multi handle (sends RST_STREAM) and free it.
    func cancel(_ transfer: CurlTransfer) {
        loop.execute {
            self.remove(transfer, failure: UpstreamFailure(.cancelled, message: "Anthropic API call cancelled"))
        }
    }

    /// Aborts every transfer and cleans up the multi handle (closing its connections): on the loop while it runs,
    /// else here (a loop that has not started yet must not start afterwards). The first call returns once that is
    /// done; later calls return at once.
    func shutdown() async {
        guard beginStopping() else { return }
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            closeOnLoop { done.resume() }
        }
    }

    /// Starts `shutdown` without waiting for it to finish: for `UpstreamClient.deinit`, which must not block.
    func startShutdown() {
        guard beginStopping() else { return }
        closeOnLoop {}
    }

    /// True for the first caller: new submissions fail from now on.
    private func beginStopping() -> Bool {
        lifecycle.withLock { state in
            defer { if state == .running { state = .stopping } }
            return state == .running
        }
    }

    private func closeOnLoop(then done: @escaping @Sendable () -> Void) {
        // A loop that never started (or has exited) will not run anything: clean up here.
        if loop.isRunning,
            loop.execute({
                self.close()
                done()
            })
        {
            return
        }
        close()
        done()
    }

    // MARK: Loop thread

    private func close() {
        let failure = UpstreamFailure(.cancelled, message: "the upstream client has shut down")
        for transfer in Array(active.values) { remove(transfer, failure: failure) }
        if let curlTimer { loop.cancelTimer(curlTimer.id) }
        timeoutActionQueued = false
        curl_multi_cleanup(multiHandle)  // closes every connection
        for socket in watchedSockets.keys { loop.unwatch(socket) }
        watchedSockets = [:]
        lifecycle.withLock { $0 = .closed }
    }

    /// libcurl reports the sockets to watch and when to call it back through these callbacks; both run on the
    /// loop, inside libcurl calls.
    private func installCallbacks() {
        let context = Unmanaged.passUnretained(self).toOpaque()
        let socketFunction:
            @convention(c) (
                UnsafeMutableRawPointer?, curl_socket_t, Int32, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?
            ) -> Int32 = { _, socket, what, context, _ in
                Unmanaged<CurlMulti>.fromOpaque(context!).takeUnretainedValue().watch(socket, what: what)
                return 0
            }
        let timerFunction: @convention(c) (UnsafeMutableRawPointer?, Int, UnsafeMutableRawPointer?) -> Int32 = {
            _, milliseconds, context in
            Unmanaged<CurlMulti>.fromOpaque(context!).takeUnretainedValue().setCurlTimer(milliseconds: milliseconds)
            return 0
        }
        _ = sluice_curl_multi_setopt_socket_function(multiHandle, socketFunction)
        _ = sluice_curl_multi_setopt_ptr(multiHandle, CURLMOPT_SOCKETDATA, context)
        _ = sluice_curl_multi_setopt_timer_function(multiHandle, timerFunction)
        _ = sluice_curl_multi_setopt_ptr(multiHandle, CURLMOPT_TIMERDATA, context)
    }

    private func watch(_ socket: curl_socket_t, what: Int32) {
        if what == CURL_POLL_REMOVE {
            if watchedSockets.removeValue(forKey: socket) != nil { loop.unwatch(socket) }
            return
        }
        var mask: UInt32 = 0
        if what & CURL_POLL_IN != 0 { mask |= EPOLLIN.rawValue }
        if what & CURL_POLL_OUT != 0 { mask |= EPOLLOUT.rawValue }
        // libcurl repeats the socket's mask each time another transfer joins its connection: already watched as asked.
        guard watchedSockets[socket] != mask else { return }
        watchedSockets[socket] = mask
        loop.watch(socket, events: mask) { [unowned self] ready in
            var flags: Int32 = 0
            if ready & (EPOLLIN.rawValue | EPOLLHUP.rawValue) != 0 { flags |= CURL_CSELECT_IN }
            if ready & EPOLLOUT.rawValue != 0 { flags |= CURL_CSELECT_OUT }
            if ready & EPOLLERR.rawValue != 0 { flags |= CURL_CSELECT_ERR }
            socketAction(socket, events: flags)
        }
    }

    /// libcurl must not be called back from inside its timer callback: a loop task or timer does it.
    ///
    /// On almost every socket action libcurl 7.88 asks for a timeout action at once (data for one transfer woke
    /// another on its connection), and after it names its next deadline again (another transfer's connect timeout).
    /// "At once" is a loop task, leaving the deadline's timer armed, so that timer is neither cancelled nor
    /// re-armed per upstream event; libcurl tolerates a timeout action with nothing due.
    private func setCurlTimer(milliseconds: Int) {
        if milliseconds == 0 {
            guard !timeoutActionQueued else { return }
            timeoutActionQueued = true
            loop.execute { [unowned self] in
                // Dropped when `close` ran meanwhile.
                guard timeoutActionQueued else { return }
                timeoutActionQueued = false
                socketAction(CURL_SOCKET_TIMEOUT, events: 0)
            }
            return
        }
        guard milliseconds > 0 else {
            if let curlTimer { loop.cancelTimer(curlTimer.id) }
            curlTimer = nil
            return
        }
        let deadline = ContinuousClock.now + .milliseconds(milliseconds)
        // libcurl names a deadline in whole milliseconds from now, rounded down: a timer armed within a millisecond
        // of it is the one asked for.
        if let armed = curlTimer {
            if (deadline - Self.curlTimerSlack..<deadline + Self.curlTimerSlack).contains(armed.at) { return }
            loop.cancelTimer(armed.id)
        }
        let id = loop.scheduleTimer(after: .milliseconds(milliseconds)) { [unowned self] in
            curlTimer = nil
            socketAction(CURL_SOCKET_TIMEOUT, events: 0)
        }
        curlTimer = (id, deadline)
    }

    private static let curlTimerSlack: Duration = .milliseconds(1)

    /// Lets libcurl act on one socket (or on its timers), then completes the transfers that finished.
    private func socketAction(_ socket: curl_socket_t, events: Int32) {
        var running: Int32 = 0
        curl_multi_socket_action(multiHandle, socket, events, &running)
        var remaining: Int32 = 0
        while let message = curl_multi_info_read(multiHandle, &remaining) {
            guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle else { continue }
            var context: UnsafeMutableRawPointer?
            _ = sluice_curl_easy_getinfo_ptr(easy, CURLINFO_PRIVATE, &context)
            guard let context else { continue }
            let transfer = Unmanaged<CurlTransfer>.fromOpaque(context).takeUnretainedValue()
            complete(transfer, code: message.pointee.data.result)
        }
    }

    private func start(_ transfer: CurlTransfer) {
        let now = ContinuousClock.now
        guard !transfer.channel.isClosed else { return }  // cancelled before it started
        guard lifecycle.withLock({ $0 == .running }) else {
            transfer.channel.finish(.failure(UpstreamFailure(.cancelled, message: "the upstream client has shut down")))
            return
        }
        do throws(UpstreamFailure) {
            try transfer.configure(
                url: baseURL + transfer.path, httpVersion: httpVersion, freshConnection: connectionPerTransfer, configuration: configuration
            )
        } catch {
            transfer.release()
            transfer.channel.finish(.failure(error))
            return
        }
        transfer.startedAt = now
        transfer.lastProgress = now
        let code = curl_multi_add_handle(multiHandle, transfer.easy)
        guard code == CURLM_OK else {
            transfer.release()
            transfer.channel.finish(
                .failure(
                    UpstreamFailure(
                        .connectionFailed, message: "curl_multi_add_handle failed: \(String(cString: curl_multi_strerror(code)))"
                    )))
            return
        }
        active[ObjectIdentifier(transfer)] = transfer
        openTransfers.add(1, ordering: .releasing)
        transfer.deadlineMovedEarlier = { [unowned self, unowned transfer] in armDeadline(transfer) }
        armDeadline(transfer)
    }

    /// Aborts a transfer that is still in the multi handle (a no-op otherwise) and ends its stream with `failure`
    /// unless the stream already ended.
    private func remove(_ transfer: CurlTransfer, failure: UpstreamFailure) {
        guard active.removeValue(forKey: ObjectIdentifier(transfer)) != nil else { return }
        disarmDeadline(transfer)
        // With no other transfer left, nothing else would flush this stream's RST_STREAM (see `closeConnection`).
        if active.isEmpty { transfer.closeConnection() }
        curl_multi_remove_handle(multiHandle, transfer.easy)
        transfer.release()
        openTransfers.subtract(1, ordering: .releasing)
        transfer.channel.finish(.failure(failure))
    }

    private func complete(_ transfer: CurlTransfer, code: CURLcode) {
        guard active.removeValue(forKey: ObjectIdentifier(transfer)) != nil else { return }
        disarmDeadline(transfer)
        let result = transfer.outcome(code: code)
        if transfer.abortedForSlowConsumer { slowConsumerAborts.add(1, ordering: .relaxed) }
        if case .failure(let failure) = result {
            logger.debug(
                "Anthropic API call failed",
                metadata: [
                    "kind": "\(failure.kind.rawValue)", "error": "\(failure.message)",
                ])
        }
        curl_multi_remove_handle(multiHandle, transfer.easy)
        transfer.release()
        openTransfers.subtract(1, ordering: .releasing)
        if transfer.buffersResponse, case .success = result { transfer.channel.setResponseBody(transfer.bufferedBody) }
        transfer.channel.finish(result)
    }

    // MARK: Deadlines

    /// Makes sure a loop timer looks at `transfer` by its current deadline. Each transfer has one timer, re-armed
    /// only when it fires (progress merely moves the idle deadline later) or when the deadline moves earlier
    /// (first output, `message_stop`): no periodic pass over every transfer, which cost ~10 % of a core at
    /// 10,000 streams.
    private func armDeadline(_ transfer: CurlTransfer) {
        let deadline = transfer.nextDeadline(configuration: configuration, endOfStreamGrace: Self.endOfStreamGrace).at
        if let armed = transfer.deadlineTimer {
            if armed.at <= deadline { return }
            loop.cancelTimer(armed.id)
        }
        let id = loop.scheduleTimer(after: deadline - .now) { [unowned self, weak transfer] in
            guard let transfer else { return }
            transfer.deadlineTimer = nil
            checkDeadline(transfer)
        }
        transfer.deadlineTimer = (id, deadline)
    }

    private func disarmDeadline(_ transfer: CurlTransfer) {
        if let armed = transfer.deadlineTimer { loop.cancelTimer(armed.id) }
        transfer.deadlineTimer = nil
        transfer.deadlineMovedEarlier = nil
    }

    /// Aborts `transfer` if its first-byte or idle deadline has passed, retires it once `message_stop` is
    /// `endOfStreamGrace` old, and otherwise re-arms its timer.
    private func checkDeadline(_ transfer: CurlTransfer) {
        guard active[ObjectIdentifier(transfer)] != nil else { return }
        let (deadline, kind) = transfer.nextDeadline(configuration: configuration, endOfStreamGrace: Self.endOfStreamGrace)
        guard deadline <= .now else { return armDeadline(transfer) }
        let requestID = transfer.responseHead?.requestID
        let failure: UpstreamFailure
        switch kind {
        case .retire:
            // Complete after message_stop; libcurl 7.88 sometimes never reports the stream's end
            // (seen under load), which would hold the transfer until the idle timeout.
            return remove(transfer, failure: UpstreamFailure(.cancelled, message: "retired after message_stop"))
        case .firstByte:
            failure = UpstreamFailure(
                .firstByteTimeout,
                message: "Anthropic API sent no model output within \(DurationParsing.format(configuration.firstByteTimeout))",
                requestID: requestID
            )
        case .idle:
            failure = UpstreamFailure(
                .idleTimeout,
                message: "Anthropic API stream idle (no events but pings) for \(DurationParsing.format(configuration.idleTimeout))",
                requestID: requestID
            )
        }
        logger.debug("Anthropic API call timed out", metadata: ["error": "\(failure.message)"])
        remove(transfer, failure: failure)
    }

    /// How long a transfer may stay open after `message_stop` before it is retired.
    static let endOfStreamGrace: Duration = .seconds(1)
}
