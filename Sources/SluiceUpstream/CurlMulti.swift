import CCurl
import Glibc
import Logging
import SluiceWire
import Synchronization

/// `curl_global_init` is not thread-safe in libcurl 7.88: run it once, before the first multi handle.
private let curlGlobalInitResult: CURLcode = curl_global_init(Int(CURL_GLOBAL_DEFAULT))

/// One libcurl multi handle and the thread that drives it.
///
/// Threading: everything but `submit`, `cancel`, `shutdown` and the atomics is confined to the multi thread.
/// Those three only touch `inbox` under its lock and then call `curl_multi_wakeup`, the one multi call libcurl
/// allows from another thread. The multi handle itself is cleaned up in `deinit`, which can only run after
/// The multi thread cleans up the multi handle (closing its connections) when it exits; `curl_multi_wakeup` is
/// only called under the inbox lock and only while the handle exists.
final class CurlMulti: @unchecked Sendable {
    let configuration: UpstreamConfiguration
    let logger: Logger
    let openTransfers = Atomic<Int>(0)
    let slowConsumerAborts = Atomic<Int>(0)

    private let multiHandle: UnsafeMutableRawPointer
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
        /// The multi thread has exited and cleaned up the multi handle: no more `curl_multi_wakeup`.
        var multiClosed = false
    }

    // Multi-thread-confined state.
    private var active: [ObjectIdentifier: CurlTransfer] = [:]

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
        guard let multi = curl_multi_init() else { throw .invalid("curl_multi_init failed") }
        _ = sluice_curl_multi_setopt_long(multi, CURLMOPT_PIPELINING, Int(CURLPIPE_MULTIPLEX))
        _ = sluice_curl_multi_setopt_long(multi, CURLMOPT_MAX_CONCURRENT_STREAMS, configuration.maxConcurrentStreams)
        self.multiHandle = multi
        connectionPerTransfer = lowered.hasPrefix("http://") && Self.libcurlVersion < 0x08_00_00
        self.url = base + "/v1/messages"
        self.configuration = configuration
        self.logger = logger
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
            if !inbox.multiClosed { curl_multi_wakeup(multiHandle) }
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
            return nil
        }, box.toOpaque())
        precondition(result == 0, "pthread_create failed: \(result)")
        thread.withLock { $0 = handle }
    }

    // MARK: Multi thread

    private func run() {
        var running: Int32 = 0
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
            let now = ContinuousClock.now
            for transfer in submissions { start(transfer, now: now) }
            for transfer in cancellations {
                remove(transfer, failure: UpstreamFailure(.cancelled, message: "Anthropic API call cancelled"))
            }

            curl_multi_perform(multiHandle, &running)
            var remaining: Int32 = 0
            while let message = curl_multi_info_read(multiHandle, &remaining) {
                guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle else { continue }
                var context: UnsafeMutableRawPointer?
                _ = sluice_curl_easy_getinfo_ptr(easy, CURLINFO_PRIVATE, &context)
                guard let context else { continue }
                let transfer = Unmanaged<CurlTransfer>.fromOpaque(context).takeUnretainedValue()
                complete(transfer, code: message.pointee.data.result)
            }

            let timeout = expireTimeouts(now: ContinuousClock.now)
            curl_multi_poll(multiHandle, nil, 0, timeout, nil)
        }
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

    /// Aborts transfers past their first-byte or idle deadline; returns the poll timeout in milliseconds
    /// (until the nearest remaining deadline, at most one second).
    private func expireTimeouts(now: ContinuousClock.Instant) -> Int32 {
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
        let wait = nearest - now
        let milliseconds = wait.components.seconds * 1000 + wait.components.attoseconds / 1_000_000_000_000_000
        return Int32(clamping: max(1, milliseconds + 1))
    }

    /// How long a transfer may stay open after `message_stop` before it is retired.
    static let endOfStreamGrace: Duration = .seconds(1)

    static func format(_ duration: Duration) -> String {
        let milliseconds = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
        return milliseconds % 1000 == 0 ? "\(milliseconds / 1000) s" : "\(milliseconds) ms"
    }
}
