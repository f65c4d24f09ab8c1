import CLinux
import CNGHTTP2
import COpenSSL
import Glibc
import Logging
import SluiceIO
import SluiceWire

/// One accepted connection: a socket (optionally TLS, see `SessionIO`), an nghttp2 server
/// session and its streams. Its lifecycle (handshake, protocol detection, drain, close) is a
/// `ServerConnectionStateMachine`; this class performs what it decides. Lives on one event loop
/// and is touched only from that loop's thread.
final class HTTP2Connection: Selectable {
    private let io: SessionIO
    unowned let loop: EventLoop
    let server: HTTP2Server
    let logger: Logger
    private var machine: ServerConnectionStateMachine
    private(set) var session: OpaquePointer?
    var streams: [Int32: HTTP2Stream] = [:]
    private var flushScheduled = false
    var lastActivity = ContinuousClock.now
    /// Since when the idle sweep has seen a begun response held up by the client's flow-control
    /// window with no WINDOW_UPDATE from it; a WINDOW_UPDATE clears it.
    var windowBlockedSince: ContinuousClock.Instant?

    init(fd: Int32, loop: EventLoop, server: HTTP2Server, tlsContext: TLSContext?) throws {
        self.io = SessionIO(fd: fd, loop: loop)
        self.loop = loop
        self.server = server
        self.logger = server.logger
        machine = ServerConnectionStateMachine(tls: tlsContext != nil)
        if let tlsContext {
            guard let ssl = SSL_new(tlsContext.context) else {
                throw IOError.configuration("TLS: SSL_new failed: \(TLSContext.lastError())")
            }
            SSL_set_fd(ssl, fd)
            SSL_set_accept_state(ssl)
            io.tls = ssl
        }
        try makeSession()
        try loop.register(fd, self, events: EPOLLIN.rawValue | EPOLLRDHUP.rawValue)
    }

    private func makeSession() throws {
        var callbacks: OpaquePointer?
        nghttp2_session_callbacks_new(&callbacks)
        defer { nghttp2_session_callbacks_del(callbacks) }
        HTTP2Connection.installCallbacks(callbacks)

        var option: OpaquePointer?
        nghttp2_option_new(&option)
        defer { nghttp2_option_del(option) }
        let limits = server.configuration.limits
        // Rapid Reset (CVE-2023-44487) and CONTINUATION flood (CVE-2024-28182) guards, backported by Debian.
        nghttp2_option_set_stream_reset_rate_limit(option, 1000, 33)
        nghttp2_option_set_max_continuations(option, 8)
        nghttp2_option_set_max_settings(option, 32)
        nghttp2_option_set_max_outbound_ack(option, 1000)
        nghttp2_option_set_max_deflate_dynamic_table_size(option, 4096)

        var session: OpaquePointer?
        let rv = nghttp2_session_server_new2(&session, callbacks, Unmanaged.passUnretained(self).toOpaque(), option)
        guard rv == 0, let session else {
            throw IOError.configuration("nghttp2_session_server_new2 failed: \(String(cString: nghttp2_strerror(rv)))")
        }
        self.session = session
        var settings = [
            nghttp2_settings_entry(
                settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: UInt32(limits.maxStreamsPerConnection)),
            nghttp2_settings_entry(
                settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: UInt32(limits.maxHeaderListSize)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: 1 << 20),
        ]
        nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
        // A larger connection window lets many streams upload their requests without stalling.
        nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, 16 << 20)
    }

    // MARK: Readiness

    func handleEvents(_ events: UInt32) {
        if events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 && events & EPOLLIN.rawValue == 0 {
            close(reason: "socket error or hang-up")
            return
        }
        if machine.isHandshaking {
            continueHandshake()
            if machine.isHandshaking || machine.isClosed { return }
        }
        if events & EPOLLIN.rawValue != 0 { readAvailable() }
        if machine.isClosed { return }
        // Reading may have queued frames (SETTINGS ACK, WINDOW_UPDATE, responses); EPOLLOUT means room again.
        flushNow()
    }

    private func continueHandshake() {
        guard let tls = io.tls else { return }
        let rv = SSL_do_handshake(tls)
        if rv == 1 {
            var protocolName: UnsafePointer<UInt8>?
            var length: UInt32 = 0
            SSL_get0_alpn_selected(tls, &protocolName, &length)
            io.setWritableInterest(false)
            let alpnH2 = length == 2 && protocolName?[0] == UInt8(ascii: "h") && protocolName?[1] == UInt8(ascii: "2")
            // ALPN http/1.1, or none at all: HTTP/1.1.
            if !machine.handshakeCompleted(alpnH2: alpnH2) { switchToHTTP1(replaying: []) }
            return
        }
        switch SSL_get_error(tls, rv) {
        case SSL_ERROR_WANT_READ: io.setWritableInterest(false)
        case SSL_ERROR_WANT_WRITE: io.setWritableInterest(true)
        default:
            ERR_clear_error()
            close(reason: "TLS handshake failed")
        }
    }

    private func readAvailable() {
        let buffer = server.readBuffer(for: loop)
        // A bounded number of reads per wakeup keeps one busy connection from starving the loop.
        for _ in 0..<8 {
            let count = io.receive(into: buffer)
            if count > 0 {
                lastActivity = .now
                let bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<count])
                if case .switchToHTTP1(let replay) = machine.received(bytes) { return switchToHTTP1(replaying: replay) }
                if let error = io.deliver(bytes, to: session!) {
                    logger.debug("closing connection: \(error)")
                    // Some fatal errors (a CONTINUATION flood, say) leave no GOAWAY queued: say why we hang up.
                    nghttp2_session_terminate_session(session, NGHTTP2_PROTOCOL_ERROR.rawValue)
                    flushNow()
                    close(reason: "protocol error")
                    return
                }
                if count < buffer.count { return }
            } else if count == 0 {
                close(reason: "peer closed the connection")
                return
            } else {
                return
            }
        }
    }

    /// Hands the socket to an `HTTP1Connection` (the machine is in `handedToHTTP1`); this
    /// connection is done without closing it.
    private func switchToHTTP1(replaying bytes: [UInt8]) {
        if let session {
            nghttp2_session_del(session)
            self.session = nil
        }
        server.switchToHTTP1(self, io: io, replaying: bytes, on: loop)
    }

    // MARK: Output

    /// Coalesces flushes requested while the loop processes a batch of tasks.
    func scheduleFlush() {
        guard !flushScheduled, !machine.isClosed else { return }
        flushScheduled = true
        server.enqueueFlush(self, on: loop)
    }

    func flushNow() {
        flushScheduled = false
        guard machine.speaksHTTP2, let session else { return }
        // nghttp2 callbacks run inside mem_send/mem_recv; whatever they want flushed waits for the loop.
        guard !io.inNGHTTP2Call else { return scheduleFlush() }
        if machine.willWrite(hasOpenStreams: !streams.isEmpty) { submitFinalGoAway() }
        switch io.flush(session) {
        case .failed(let reason): return close(reason: reason)
        case .blocked: return
        case .idle: break
        }
        if nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0 {
            close(reason: "session finished")
        }
    }

    // MARK: Lifecycle

    var activeStreamCount: Int { streams.count }

    /// True when a begun response cannot send because the client's window, the connection's or
    /// its stream's, is used up.
    var isBlockedByClientWindow: Bool {
        guard let session else { return false }
        let connectionWindow = nghttp2_session_get_remote_window_size(session)
        return streams.values.contains { stream in
            stream.responseSubmitted && (connectionWindow <= 0 || nghttp2_session_get_stream_remote_window_size(session, stream.id) <= 0)
        }
    }

    /// A client that stopped reading: its streams' handlers are suspended on full queues, and the
    /// connection would hold them (up to 64 KiB each) for as long as it stays open.
    func closeStalled() {
        guard !machine.isClosed, let session else { return }
        logger.debug("closing a connection whose client has not opened its flow-control window for the idle timeout")
        nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM.rawValue)
        flushNow()
        close(reason: "client stopped reading")
    }

    /// Graceful shutdown, step 1: tell the client no new streams are welcome soon.
    func sendShutdownNotice() {
        guard let session, machine.shutdownNotice() else { return }
        nghttp2_submit_shutdown_notice(session)
        flushNow()
    }

    /// Graceful shutdown, step 2 (and idle timeout): GOAWAY naming the last stream we processed.
    /// nghttp2 then stops wanting to read or write once the remaining streams finish, and
    /// `flushNow` closes the connection.
    func sendGoAway() {
        switch machine.goAway() {
        case .none: break
        // Idle or shutting down before it said which protocol it speaks: nothing to tell it.
        case .close: close(reason: "no request before the idle timeout or shutdown")
        case .submitFinalGoAway:
            submitFinalGoAway()
            flushNow()
        case .flush: flushNow()
        }
    }

    private func submitFinalGoAway() {
        guard let session else { return }
        let lastStreamID = nghttp2_session_get_last_proc_stream_id(session)
        nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), lastStreamID, NGHTTP2_NO_ERROR.rawValue, nil, 0)
    }

    func close(reason: String) {
        guard machine.close() else { return }
        logger.trace("connection closed: \(reason)")
        for stream in streams.values {
            stream.connectionClosed()
        }
        streams.removeAll()
        io.release()
        if let session {
            nghttp2_session_del(session)
            self.session = nil
        }
        server.connectionClosed(self, on: loop)
    }

    var isClosed: Bool { machine.isClosed }
    var isDraining: Bool { machine.isDraining }
}
