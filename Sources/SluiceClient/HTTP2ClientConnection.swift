import CLinux
import CNGHTTP2
import COpenSSL
import Glibc
import SluiceIO
import SluiceWire

/// One client connection: a nonblocking socket (optionally TLS), an nghttp2 client session
/// and the streams on it. Loop-confined, like the server's `HTTP2Connection`, and driven the
/// same way through `SessionIO`: `mem_recv` on readable, gathered `mem_send` at the end of the
/// loop iteration, no flushing from inside nghttp2 callbacks.
final class HTTP2ClientConnection: Selectable {
    private enum Phase { case connecting, handshaking, open, closed }

    let target: HTTP2Target
    unowned let pool: HTTP2ClientPool
    unowned let context: ClientLoopContext
    private var loop: EventLoop { context.loop }
    /// The socket while connecting; once connected, `io` owns it.
    private var fd: Int32 = -1
    private var io: SessionIO?
    private let addresses: [SocketAddress]
    private var nextAddress = 0
    private var phase = Phase.connecting
    private(set) var session: OpaquePointer?
    var streams: [Int32: HTTP2ClientStream] = [:]
    /// False after GOAWAY, stream-id exhaustion or a failure: no new streams go here.
    private(set) var acceptingStreams = true
    private var settingsReceived = false
    private var flushScheduled = false
    /// A close decided where closing is not allowed (inside nghttp2, or while the pool is
    /// assigning streams); carried out by the next flush.
    private var closeReason: String?
    private var connectTimer: TimerID?

    init(target: HTTP2Target, addresses: [SocketAddress], pool: HTTP2ClientPool, context: ClientLoopContext) throws {
        self.target = target
        self.addresses = addresses
        self.pool = pool
        self.context = context
        try makeSession()
        context.connectionCount.value.add(1, ordering: .relaxed)
        connectTimer = context.loop.scheduleTimer(after: context.configuration.connectTimeout) { [weak self] in
            guard let self else { return }
            connectTimer = nil
            close(
                reason: "cannot connect to \(target): no connection within \(DurationParsing.format(context.configuration.connectTimeout))")
        }
        if let failure = connectNext() { closeLater(reason: "cannot connect to \(target): \(failure)") }
    }

    private func makeSession() throws {
        var callbacks: OpaquePointer?
        nghttp2_session_callbacks_new(&callbacks)
        defer { nghttp2_session_callbacks_del(callbacks) }
        HTTP2ClientConnection.installCallbacks(callbacks)
        var session: OpaquePointer?
        let rv = nghttp2_session_client_new2(&session, callbacks, Unmanaged.passUnretained(self).toOpaque(), nil)
        guard rv == 0, let session else {
            throw IOError.configuration("nghttp2_session_client_new2 failed: \(String(cString: nghttp2_strerror(rv)))")
        }
        self.session = session
        var settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: 1 << 20),
        ]
        nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
        // Many streams share the connection window; nghttp2 replenishes it as we consume.
        nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, 16 << 20)
    }

    // MARK: Streams

    /// Most streams this connection takes: our cap, lowered by the server's setting once known.
    /// Before the server's SETTINGS arrive nghttp2 itself holds back requests beyond 100.
    private var streamLimit: Int {
        let cap = context.configuration.streamsPerConnection
        guard settingsReceived, let session else { return cap }
        return min(cap, Int(nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)))
    }

    var hasRoom: Bool { acceptingStreams && streams.count < streamLimit }

    /// Submits the stream's request; frames go out at the end of the loop iteration.
    func open(_ stream: HTTP2ClientStream) {
        guard let session else { return pool.retry(stream) }
        var provider = nghttp2_data_provider()
        provider.read_callback = HTTP2ClientConnection.requestBodyRead
        let id = withNameValues(stream.headers) { nva, count in
            nghttp2_submit_request(session, nil, nva, count, &provider, nil)
        }
        guard id > 0 else {
            if id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE.rawValue {
                acceptingStreams = false
                pool.retry(stream)
            } else {
                stream.finish(
                    RPCClientStatus(code: .internal, message: "cannot start the stream: \(String(cString: nghttp2_strerror(id)))"))
            }
            return
        }
        stream.id = id
        stream.connection = self
        streams[id] = stream
        scheduleFlush()
    }

    /// RST_STREAM(CANCEL); nghttp2 then closes the stream and it reports its local status.
    func reset(_ stream: HTTP2ClientStream) {
        guard let session else { return }
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream.id, NGHTTP2_CANCEL.rawValue)
        scheduleFlush()
    }

    /// nghttp2 is done with a stream (closed, or its HEADERS could not be sent).
    func streamEnded(_ stream: HTTP2ClientStream, errorCode: UInt32) {
        stream.connection = nil
        if errorCode == NGHTTP2_REFUSED_STREAM.rawValue, stream.mayRetry {
            pool.retry(stream)
        } else {
            stream.closed(errorCode: errorCode)
        }
        pool.schedulePump()
        if !acceptingStreams && streams.isEmpty { closeLater(reason: "the server sent GOAWAY and every stream has ended") }
    }

    func goAwayReceived() {
        acceptingStreams = false
        if streams.isEmpty { closeLater(reason: "the server sent GOAWAY") }
    }

    func settingsChanged() {
        settingsReceived = true
        pool.schedulePump()
    }

    // MARK: Connecting

    /// Starts a nonblocking connect to the next address; a description of the last failure when
    /// none is left.
    private func connectNext() -> String? {
        var failure = "no address"
        while nextAddress < addresses.count {
            let address = addresses[nextAddress]
            nextAddress += 1
            let socketFD = socket(
                address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard socketFD >= 0 else {
                failure = String(cString: strerror(errno))
                continue
            }
            var on: Int32 = 1
            setsockopt(socketFD, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
            let rv = address.bytes.withUnsafeBytes {
                Glibc.connect(socketFD, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count))
            }
            if rv == 0 || errno == EINPROGRESS {
                do {
                    try loop.register(socketFD, self, events: EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLRDHUP.rawValue)
                    fd = socketFD
                    return nil
                } catch {
                    failure = "\(error)"
                }
            } else {
                failure = String(cString: strerror(errno))
            }
            Glibc.close(socketFD)
        }
        return failure
    }

    private func finishConnect(_ events: UInt32) {
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
        if error == 0 && events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 { error = ECONNREFUSED }
        if error != 0 {
            loop.deregister(fd)
            Glibc.close(fd)
            fd = -1
            // Another address (IPv4 after IPv6, say) may answer; otherwise report this failure.
            if connectNext() != nil { close(reason: "cannot connect to \(target): \(String(cString: strerror(error)))") }
            return
        }
        let io = SessionIO(fd: fd, loop: loop, writableInterest: true)
        self.io = io
        guard target.isTLS else { return connected() }
        guard let tlsContext = context.tlsContext else { return close(reason: "TLS is not configured") }
        do {
            io.tls = try tlsContext.makeConnection(fd: fd, host: target.host)
        } catch {
            return close(reason: "\(error)")
        }
        phase = .handshaking
        continueHandshake()
    }

    private func continueHandshake() {
        guard let tls = io?.tls else { return }
        let rv = SSL_do_handshake(tls)
        if rv == 1 {
            var protocolName: UnsafePointer<UInt8>?
            var length: UInt32 = 0
            SSL_get0_alpn_selected(tls, &protocolName, &length)
            guard length == 2, let protocolName, protocolName[0] == UInt8(ascii: "h"), protocolName[1] == UInt8(ascii: "2") else {
                return close(reason: "TLS with \(target): the server did not agree to HTTP/2 (ALPN h2)")
            }
            return connected()
        }
        switch SSL_get_error(tls, rv) {
        case SSL_ERROR_WANT_READ: io?.setWritableInterest(false)
        case SSL_ERROR_WANT_WRITE: io?.setWritableInterest(true)
        default:
            let reason = TLSClientContext.handshakeFailure(tls)
            ERR_clear_error()
            close(reason: "TLS handshake with \(target) failed: \(reason)")
        }
    }

    private func connected() {
        phase = .open
        if let connectTimer { loop.cancelTimer(connectTimer) }
        connectTimer = nil
        // The preface, SETTINGS and every request submitted while connecting go out now.
        flushNow()
    }

    // MARK: Readiness

    func handleEvents(_ events: UInt32) {
        switch phase {
        case .connecting:
            finishConnect(events)
            return
        case .handshaking:
            continueHandshake()
            return
        case .open: break
        case .closed: return
        }
        if events & (EPOLLIN.rawValue | EPOLLERR.rawValue | EPOLLHUP.rawValue | EPOLLRDHUP.rawValue) != 0 { readAvailable() }
        if phase == .closed { return }
        flushNow()
    }

    private func readAvailable() {
        guard let io, let session else { return }
        let buffer = context.readBuffer
        // Bounded per wakeup so one busy connection cannot starve the loop; TLS may hold decrypted
        // bytes epoll knows nothing about, so a full round asks to be called again.
        for _ in 0..<16 {
            let count = io.receive(into: buffer)
            if count > 0 {
                if let error = io.deliver(UnsafeRawBufferPointer(rebasing: buffer[0..<count]), to: session) {
                    return close(reason: "HTTP/2 protocol error from \(target): \(error)")
                }
                if closeReason != nil { return }
                if count < buffer.count && io.tls == nil { return }
            } else if count == 0 {
                return close(reason: "\(target) closed the connection")
            } else {
                return
            }
        }
        let bound = LoopBound(self, loop: loop)
        loop.execute { bound.value.handleEvents(EPOLLIN.rawValue) }
    }

    // MARK: Output

    func scheduleFlush() {
        guard !flushScheduled, phase != .closed else { return }
        flushScheduled = true
        context.enqueueFlush(self)
    }

    private func closeLater(reason: String) {
        acceptingStreams = false
        if closeReason == nil { closeReason = reason }
        scheduleFlush()
    }

    func flushNow() {
        flushScheduled = false
        guard phase != .closed else { return }
        guard io?.inNGHTTP2Call != true else { return scheduleFlush() }
        if let closeReason { return close(reason: closeReason) }
        guard phase == .open, let session, let io else { return }
        if case .failed(let reason) = io.flush(session) { return close(reason: "writing to \(target): \(reason)") }
        if let closeReason { return close(reason: closeReason) }
    }

    // MARK: Closing

    /// Fails the streams still open with UNAVAILABLE (unless they already ended locally) and
    /// releases everything. Not to be called from inside nghttp2 (see `closeLater`).
    func close(reason: String) {
        guard phase != .closed else { return }
        let wasOpen = phase == .open
        phase = .closed
        acceptingStreams = false
        if let connectTimer { loop.cancelTimer(connectTimer) }
        connectTimer = nil
        let orphans = streams.values
        streams.removeAll()
        if let io {
            io.release()
        } else if fd >= 0 {
            loop.deregister(fd)
            Glibc.close(fd)
        }
        fd = -1
        if let session { nghttp2_session_del(session) }
        session = nil
        context.connectionCount.value.subtract(1, ordering: .relaxed)
        let message = wasOpen ? "the connection to \(target) was lost: \(reason)" : reason
        for stream in orphans {
            stream.connection = nil
            stream.connectionLost(message)
        }
        pool.connectionClosed(self)
    }
}
