import CCurl
import CLinux
import Glibc
import Logging
import SluiceWire
import Synchronization

/// `curl_global_init` is not thread-safe in libcurl 7.88: run it once, before the first multi handle.
private let curlGlobalInitResult: CURLcode = curl_global_init(Int(CURL_GLOBAL_DEFAULT))

/// One libcurl multi handle and the thread that drives it with `curl_multi_socket_action` on its own epoll set,
/// so each wakeup costs work only for the sockets and transfers that have something to do (`curl_multi_perform`
/// walks every transfer, every time).
///
/// Threading: everything but `submit`, `cancel`, `shutdown` and the atomics is confined to the multi thread.
/// Those three only touch `inbox` under its lock and then write the wakeup eventfd, which the multi thread closes
/// (with the multi handle) only after it has marked the inbox closed.
final class CurlMulti: @unchecked Sendable {
    let configuration: UpstreamConfiguration
    let logger: Logger
    let openTransfers = Atomic<Int>(0)
    let slowConsumerAborts = Atomic<Int>(0)

    private let multiHandle: UnsafeMutableRawPointer
    private let epollFD: Int32
    private let wakeFD: Int32
    private let url: String
    private let httpVersion: Int
    /// libcurl before 8.0.0 cannot reuse or multiplex cleartext prior-knowledge HTTP/2 connections: a second
    /// transfer on one fails with CURLE_HTTP2 "Error in the HTTP2 framing layer" (curl issue 10634, fixed by
    /// curl PR 10643 in 8.0.0; Debian 12's 7.88.1 has it). For `http://` base URLs (the simulator) such versions
    /// get one connection per transfer instead. `https://` (ALPN) is unaffected and always multiplexes.
    private let connectionPerTransfer: Bool
    private let inbox = Mutex(Inbox())
    private let thread = Mutex<pthread_t?>(nil)

    private struct Inbox {
        var submissions: [CurlTransfer] = []
        var cancellations: [CurlTransfer] = []
        var stopping = false
        /// The multi thread has exited and closed the multi handle and the wakeup eventfd.
        var multiClosed = false
    }

    // Multi-thread-confined state.
    private var active: [ObjectIdentifier: CurlTransfer] = [:]
    /// The sockets libcurl asked to watch, with their epoll event masks.
    private var watchedSockets: [Int32: UInt32] = [:]
    /// When libcurl wants `curl_multi_socket_action(CURL_SOCKET_TIMEOUT)`; nil for never.
    private var curlTimerDeadline: ContinuousClock.Instant?
    /// When `expireTimeouts` next looks at the transfers.
    private var nextTimeoutScan = ContinuousClock.now

    init(configuration: UpstreamConfiguration, logger: Logger) throws(UpstreamConfigurationError) {
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
        let epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        let wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        var wakeEvent = epoll_event()
        wakeEvent.events = EPOLLIN.rawValue
        wakeEvent.data.fd = wakeFD
        guard epollFD >= 0, wakeFD >= 0, epoll_ctl(epollFD, EPOLL_CTL_ADD, wakeFD, &wakeEvent) == 0,
            let multi = curl_multi_init()
        else {
            let reason = String(cString: strerror(errno))
            if epollFD >= 0 { close(epollFD) }
            if wakeFD >= 0 { close(wakeFD) }
            throw .invalid("cannot set up the upstream client's event loop: \(reason)")
        }
        _ = sluice_curl_multi_setopt_long(multi, CURLMOPT_PIPELINING, Int(CURLPIPE_MULTIPLEX))
        _ = sluice_curl_multi_setopt_long(multi, CURLMOPT_MAX_CONCURRENT_STREAMS, configuration.maxConcurrentStreams)
        self.multiHandle = multi
        self.epollFD = epollFD
        self.wakeFD = wakeFD
        connectionPerTransfer = lowered.hasPrefix("http://") && Self.libcurlVersion < 0x08_00_00
        self.url = base + "/v1/messages"
        self.configuration = configuration
        self.logger = logger
        installCallbacks()
        startThread()
    }


    /// The running libcurl's version as 0xXXYYZZ.
    static var libcurlVersion: UInt32 {
        curl_version_info(CURLVERSION_TENTH).map { UInt32($0.pointee.version_num) } ?? 0
    }

    // MARK: Any thread

    func submit(_ transfer: CurlTransfer) {
        let accepted = inbox.withLock { inbox in
            guard !inbox.stopping else { return false }
            inbox.submissions.append(transfer)
            return true
        }
        if accepted {
            wake()
        } else {
            transfer.channel.finish(.failure(UpstreamFailure(.cancelled, message: "the upstream client has shut down")))
        }
    }

    /// The consumer is gone: remove the transfer from the multi handle (sends RST_STREAM) and free it.
    func cancel(_ transfer: CurlTransfer) {
        let queued = inbox.withLock { inbox in
            guard !inbox.stopping else { return false }
            inbox.cancellations.append(transfer)
            return true
        }
        if queued { wake() }
    }

    func shutdown() {
        inbox.withLock { $0.stopping = true }
        wake()
        let handle = thread.withLock { handle -> pthread_t? in
            defer { handle = nil }
            return handle
        }
        if let handle, pthread_equal(handle, pthread_self()) == 0 {
            pthread_join(handle, nil)
        }
    }

    private func wake() {
        inbox.withLock { inbox in
            if !inbox.multiClosed { _ = eventfd_write(wakeFD, 1) }
        }
    }

    private func startThread() {
        let box = Unmanaged.passRetained(self)
        var handle = pthread_t()
        let result = pthread_create(&handle, nil, { raw in
            let multi = Unmanaged<CurlMulti>.fromOpaque(raw!).takeRetainedValue()
            multi.run()
            multi.inbox.withLock { $0.multiClosed = true }
            curl_multi_cleanup(multi.multiHandle) // closes every connection
            close(multi.wakeFD)
            close(multi.epollFD)
            return nil
        }, box.toOpaque())
        precondition(result == 0, "pthread_create failed: \(result)")
        thread.withLock { $0 = handle }
    }

    // MARK: Multi thread

    /// libcurl reports the sockets to watch and when to call it back through these callbacks; both run on the
    /// multi thread, inside libcurl calls.
    private func installCallbacks() {
        let context = Unmanaged.passUnretained(self).toOpaque()
        let socketFunction: @convention(c) (
            UnsafeMutableRawPointer?, curl_socket_t, Int32, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?
        ) -> Int32 = { _, socket, what, context, _ in
            Unmanaged<CurlMulti>.fromOpaque(context!).takeUnretainedValue().watch(socket, what: what)
            return 0
        }
        let timerFunction: @convention(c) (UnsafeMutableRawPointer?, Int, UnsafeMutableRawPointer?) -> Int32 = {
            _, milliseconds, context in
            let multi = Unmanaged<CurlMulti>.fromOpaque(context!).takeUnretainedValue()
            multi.curlTimerDeadline = milliseconds < 0 ? nil : .now + .milliseconds(milliseconds)
            return 0
        }
        _ = sluice_curl_multi_setopt_socket_function(multiHandle, socketFunction)
        _ = sluice_curl_multi_setopt_ptr(multiHandle, CURLMOPT_SOCKETDATA, context)
        _ = sluice_curl_multi_setopt_timer_function(multiHandle, timerFunction)
        _ = sluice_curl_multi_setopt_ptr(multiHandle, CURLMOPT_TIMERDATA, context)
    }

    private func watch(_ socket: curl_socket_t, what: Int32) {
        if what == CURL_POLL_REMOVE {
            if watchedSockets.removeValue(forKey: socket) != nil { _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, socket, nil) }
            return
        }
        var mask: UInt32 = 0
        if what & CURL_POLL_IN != 0 { mask |= EPOLLIN.rawValue }
        if what & CURL_POLL_OUT != 0 { mask |= EPOLLOUT.rawValue }
        var event = epoll_event()
        event.events = mask
        event.data.fd = socket
        let operation = watchedSockets.updateValue(mask, forKey: socket) == nil ? EPOLL_CTL_ADD : EPOLL_CTL_MOD
        if epoll_ctl(epollFD, operation, socket, &event) != 0, errno == EEXIST {
            _ = epoll_ctl(epollFD, EPOLL_CTL_MOD, socket, &event)
        }
    }

    private func run() {
        var events = [epoll_event](repeating: epoll_event(), count: 256)
        while true {
            let (submissions, cancellations, stopping) = inbox.withLock { inbox in
                defer {
                    inbox.submissions = []
                    inbox.cancellations = []
                }
                return (inbox.submissions, inbox.cancellations, inbox.stopping)
            }
            if stopping {
                let failure = UpstreamFailure(.cancelled, message: "the upstream client has shut down")
                for transfer in submissions { transfer.channel.finish(.failure(failure)) }
                for transfer in Array(active.values) { remove(transfer, failure: failure) }
                return
            }
            var now = ContinuousClock.now
            for transfer in submissions { start(transfer, now: now) }
            for transfer in cancellations {
                remove(transfer, failure: UpstreamFailure(.cancelled, message: "Anthropic API call cancelled"))
            }
            if let deadline = curlTimerDeadline, deadline <= now {
                curlTimerDeadline = nil
                socketAction(CURL_SOCKET_TIMEOUT, events: 0)
            }
            now = ContinuousClock.now
            if now >= nextTimeoutScan { nextTimeoutScan = expireTimeouts(now: now) }

            let wakeAt = min(curlTimerDeadline ?? nextTimeoutScan, nextTimeoutScan)
            let count = epoll_wait(epollFD, &events, Int32(events.count), Self.milliseconds(until: wakeAt, from: now))
            for index in 0..<max(0, Int(count)) {
                let socket = events[index].data.fd
                if socket == wakeFD {
                    var value: eventfd_t = 0
                    _ = eventfd_read(wakeFD, &value)
                    continue
                }
                let ready = events[index].events
                var flags: Int32 = 0
                if ready & (EPOLLIN.rawValue | EPOLLHUP.rawValue) != 0 { flags |= CURL_CSELECT_IN }
                if ready & EPOLLOUT.rawValue != 0 { flags |= CURL_CSELECT_OUT }
                if ready & EPOLLERR.rawValue != 0 { flags |= CURL_CSELECT_ERR }
                socketAction(socket, events: flags)
            }
        }
    }

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

    /// The epoll timeout that wakes the loop at `deadline`, rounded up to whole milliseconds.
    private static func milliseconds(until deadline: ContinuousClock.Instant, from now: ContinuousClock.Instant) -> Int32 {
        guard deadline > now else { return 0 }
        let wait = deadline - now
        let milliseconds = wait.components.seconds * 1000 + wait.components.attoseconds / 1_000_000_000_000_000
        return Int32(clamping: milliseconds + 1)
    }

    private func start(_ transfer: CurlTransfer, now: ContinuousClock.Instant) {
        guard !transfer.channel.isClosed else { return } // cancelled before it started
        do throws(UpstreamFailure) {
            try transfer.configure(
                url: url, httpVersion: httpVersion, freshConnection: connectionPerTransfer, configuration: configuration
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
            transfer.channel.finish(.failure(UpstreamFailure(
                .connectionFailed, message: "curl_multi_add_handle failed: \(String(cString: curl_multi_strerror(code)))"
            )))
            return
        }
        active[ObjectIdentifier(transfer)] = transfer
        openTransfers.add(1, ordering: .releasing)
        nextTimeoutScan = min(nextTimeoutScan, now + configuration.firstByteTimeout)
    }

    /// Aborts a transfer that is still in the multi handle (a no-op otherwise) and ends its stream with `failure`
    /// unless the stream already ended.
    private func remove(_ transfer: CurlTransfer, failure: UpstreamFailure) {
        guard active.removeValue(forKey: ObjectIdentifier(transfer)) != nil else { return }
        // With no other transfer left, nothing else would flush this stream's RST_STREAM (see `closeConnection`).
        if active.isEmpty { transfer.closeConnection() }
        curl_multi_remove_handle(multiHandle, transfer.easy)
        transfer.release()
        openTransfers.subtract(1, ordering: .releasing)
        transfer.channel.finish(.failure(failure))
    }

    private func complete(_ transfer: CurlTransfer, code: CURLcode) {
        guard active.removeValue(forKey: ObjectIdentifier(transfer)) != nil else { return }
        let result = transfer.outcome(code: code)
        if transfer.abortedForSlowConsumer { slowConsumerAborts.add(1, ordering: .relaxed) }
        if case .failure(let failure) = result {
            logger.debug("Anthropic API call failed", metadata: [
                "kind": "\(failure.kind.rawValue)", "error": "\(failure.message)",
            ])
        }
        curl_multi_remove_handle(multiHandle, transfer.easy)
        transfer.release()
        openTransfers.subtract(1, ordering: .releasing)
        transfer.channel.finish(result)
    }

    /// Aborts transfers past their first-byte or idle deadline; returns when to look again: at the nearest
    /// remaining deadline, but at least `timeoutScanInterval` later (the scan visits every transfer) and at most
    /// that long later when an idle deadline may have moved closer (first output switches to the idle timeout).
    private func expireTimeouts(now: ContinuousClock.Instant) -> ContinuousClock.Instant {
        var nearest = now + .seconds(1)
        var expired: [(CurlTransfer, UpstreamFailure)] = []
        var finished: [CurlTransfer] = []
        for transfer in active.values {
            if let stoppedAt = transfer.messageStopAt {
                // Complete after message_stop; libcurl 7.88 sometimes never reports the stream's end
                // (seen under load), which would hold the transfer until the idle timeout.
                if now - stoppedAt >= Self.endOfStreamGrace {
                    finished.append(transfer)
                } else {
                    nearest = min(nearest, stoppedAt + Self.endOfStreamGrace)
                }
            } else if transfer.firstOutputAt == nil {
                let deadline = transfer.startedAt + configuration.firstByteTimeout
                if deadline <= now {
                    expired.append((transfer, UpstreamFailure(
                        .firstByteTimeout,
                        message: "Anthropic API sent no model output within \(Self.format(configuration.firstByteTimeout))",
                        requestID: transfer.responseHead?.requestID
                    )))
                } else {
                    nearest = min(nearest, deadline)
                }
            } else {
                let deadline = transfer.lastProgress + configuration.idleTimeout
                if deadline <= now {
                    expired.append((transfer, UpstreamFailure(
                        .idleTimeout,
                        message: "Anthropic API stream idle (no events but pings) for "
                            + Self.format(configuration.idleTimeout),
                        requestID: transfer.responseHead?.requestID
                    )))
                } else {
                    nearest = min(nearest, deadline)
                }
            }
        }
        for transfer in finished {
            remove(transfer, failure: UpstreamFailure(.cancelled, message: "retired after message_stop"))
        }
        for (transfer, failure) in expired {
            logger.debug("Anthropic API call timed out", metadata: ["error": "\(failure.message)"])
            remove(transfer, failure: failure)
        }
        return min(max(nearest, now + Self.timeoutScanInterval), now + Self.timeoutScanInterval * 5)
    }

    /// The shortest pause between two scans of every transfer's deadlines.
    static let timeoutScanInterval: Duration = .milliseconds(20)

    /// How long a transfer may stay open after `message_stop` before it is retired.
    static let endOfStreamGrace: Duration = .seconds(1)

    static func format(_ duration: Duration) -> String {
        let milliseconds = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
        return milliseconds % 1000 == 0 ? "\(milliseconds / 1000) s" : "\(milliseconds) ms"
    }
}
