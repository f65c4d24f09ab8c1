import SluiceIO
import CLinux
import CNGHTTP2
import COpenSSL
import Glibc
import Logging
import SluiceWire

/// One accepted connection: a socket (optionally TLS, see `SessionIO`), an nghttp2 server
/// session and its streams. Lives on one event loop and is touched only from that loop's thread.
final class HTTP2Connection: Selectable {
    private let io: SessionIO
    unowned let loop: EventLoop
    let server: HTTP2Server
    let logger: Logger
    private var tlsHandshakeDone = false
    private(set) var session: OpaquePointer?
    var streams: [Int32: HTTP2Stream] = [:]
    private var closed = false
    private var flushScheduled = false
    /// Bytes of the client preface matched so far (cleartext): anything else is HTTP/1.x.
    private var prefaceBytesChecked = 0
    /// The client speaks HTTP/2: its preface arrived, or TLS negotiated ALPN h2. Nothing is sent
    /// before, so a client that turns out to speak HTTP/1.1 gets only HTTP/1.1.
    private var speaksHTTP2 = false
    var lastActivity = ContinuousClock.now
    /// Since when the idle sweep has seen a begun response held up by the client's flow-control
    /// window with no WINDOW_UPDATE from it; a WINDOW_UPDATE clears it.
    var windowBlockedSince: ContinuousClock.Instant?
    private(set) var draining = false
    private var finalGoAwaySent = false

    private static let clientPreface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    init(fd: Int32, loop: EventLoop, server: HTTP2Server, tlsContext: TLSContext?) throws {
        self.io = SessionIO(fd: fd, loop: loop)
        self.loop = loop
        self.server = server
        self.logger = server.logger
        if let tlsContext {
            guard let ssl = SSL_new(tlsContext.context) else {
                throw IOError.configuration("TLS: SSL_new failed: \(TLSContext.lastError())")
            }
            SSL_set_fd(ssl, fd)
            SSL_set_accept_state(ssl)
            io.tls = ssl
        } else {
            tlsHandshakeDone = true
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
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: UInt32(limits.maxStreamsPerConnection)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: UInt32(limits.maxHeaderListSize)),
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
        if !tlsHandshakeDone {
            continueHandshake()
            if closed || !tlsHandshakeDone { return }
        }
        if events & EPOLLIN.rawValue != 0 { readAvailable() }
        if closed { return }
        // Reading may have queued frames (SETTINGS ACK, WINDOW_UPDATE, responses); EPOLLOUT means room again.
        flushNow()
    }

    private func continueHandshake() {
        guard let tls = io.tls else { return }
        let rv = SSL_do_handshake(tls)
        if rv == 1 {
            tlsHandshakeDone = true
            var protocolName: UnsafePointer<UInt8>?
            var length: UInt32 = 0
            SSL_get0_alpn_selected(tls, &protocolName, &length)
            io.setWritableInterest(false)
            guard length == 2, let protocolName, protocolName[0] == UInt8(ascii: "h"), protocolName[1] == UInt8(ascii: "2") else {
                // ALPN http/1.1, or none at all.
                switchToHTTP1(replaying: [])
                return
            }
            speaksHTTP2 = true
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
                if !speaksHTTP2, io.tls == nil, !checkPreface(bytes) { return }
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

    /// Matches the cleartext client preface, which may arrive a byte at a time. Returns false
    /// when the bytes diverge from it: the connection then continues as HTTP/1.x.
    private func checkPreface(_ bytes: UnsafeRawBufferPointer) -> Bool {
        for (index, byte) in bytes.enumerated() {
            if byte != Self.clientPreface[prefaceBytesChecked] {
                switchToHTTP1(replaying: Array(Self.clientPreface[0..<prefaceBytesChecked]) + Array(bytes[index...]))
                return false
            }
            prefaceBytesChecked += 1
            if prefaceBytesChecked == Self.clientPreface.count {
                speaksHTTP2 = true
                break
            }
        }
        return true
    }

    /// Hands the socket to an `HTTP1Connection`; this connection is done without closing it.
    private func switchToHTTP1(replaying bytes: [UInt8]) {
        closed = true
        if let session {
            nghttp2_session_del(session)
            self.session = nil
        }
        server.switchToHTTP1(self, io: io, replaying: bytes, on: loop)
    }

    // MARK: Output

    /// Coalesces flushes requested while the loop processes a batch of tasks.
    func scheduleFlush() {
        guard !flushScheduled, !closed else { return }
        flushScheduled = true
        server.enqueueFlush(self, on: loop)
    }

    func flushNow() {
        flushScheduled = false
        guard !closed, speaksHTTP2, let session else { return }
        // nghttp2 callbacks run inside mem_send/mem_recv; whatever they want flushed waits for the loop.
        guard !io.inNGHTTP2Call else { return scheduleFlush() }
        if draining && streams.isEmpty && !finalGoAwaySent { submitFinalGoAway() }
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
        guard !closed, let session else { return }
        logger.debug("closing a connection whose client has not opened its flow-control window for the idle timeout")
        nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM.rawValue)
        flushNow()
        close(reason: "client stopped reading")
    }

    /// Graceful shutdown, step 1: tell the client no new streams are welcome soon.
    func sendShutdownNotice() {
        guard !closed, let session, !draining else { return }
        draining = true
        nghttp2_submit_shutdown_notice(session)
        flushNow()
    }

    /// Graceful shutdown, step 2 (and idle timeout): GOAWAY naming the last stream we processed.
    /// nghttp2 then stops wanting to read or write once the remaining streams finish, and
    /// `flushNow` closes the connection.
    func sendGoAway() {
        guard !closed else { return }
        // Idle or shutting down before it said which protocol it speaks: nothing to tell it.
        guard speaksHTTP2 else { return close(reason: "no request before the idle timeout or shutdown") }
        draining = true
        submitFinalGoAway()
        flushNow()
    }

    private func submitFinalGoAway() {
        guard let session, !finalGoAwaySent else { return }
        finalGoAwaySent = true
        let lastStreamID = nghttp2_session_get_last_proc_stream_id(session)
        nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), lastStreamID, NGHTTP2_NO_ERROR.rawValue, nil, 0)
    }

    func close(reason: String) {
        guard !closed else { return }
        closed = true
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

    var isClosed: Bool { closed }
}
