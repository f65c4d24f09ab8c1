import CLinux
import CNGHTTP2
import COpenSSL
import Glibc

/// The socket side of one nghttp2 session, shared by server and client connections: reads,
/// gathered writes, TLS, and epoll interest. Loop-confined, like its connection.
///
/// Output follows nghttpd: frames from `nghttp2_session_mem_send` are gathered into one buffer
/// and written with one send; what the socket refuses stays buffered, and no new frames are
/// pulled from nghttp2 until it has drained, so a slow reader bounds the connection's memory.
package final class SessionIO {
    package enum FlushOutcome {
        /// nghttp2 has nothing more to send and everything is written.
        case idle
        /// The socket is full; EPOLLOUT will call again.
        case blocked
        case failed(String)
    }

    package let fd: Int32
    unowned let loop: EventLoop
    package var tls: OpaquePointer?
    /// True while nghttp2 runs the connection's callbacks: no flushing or closing from in there.
    package var inNGHTTP2Call = false
    private var pending: [UInt8] = []
    private var pendingIndex = 0
    private var wantsWritable = false
    private var wantsReadable = true
    private var released = false

    /// Bytes gathered from nghttp2 before they are sent.
    package static let gatherLimit = 64 * 1024

    /// - Parameter writableInterest: whether `fd` is registered for EPOLLOUT already.
    package init(fd: Int32, loop: EventLoop, writableInterest: Bool = false) {
        self.fd = fd
        self.loop = loop
        self.wantsWritable = writableInterest
    }

    /// Bytes read; 0 at EOF or after a fatal error; -1 when nothing is available now.
    package func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        if let tls {
            let rv = SSL_read(tls, buffer.baseAddress, Int32(buffer.count))
            if rv > 0 { return Int(rv) }
            switch SSL_get_error(tls, rv) {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return -1
            default:
                ERR_clear_error()
                return 0
            }
        }
        while true {
            let rv = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if rv >= 0 { return rv }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { return -1 }
            return 0
        }
    }

    /// Feeds received bytes to nghttp2; returns its error, if any.
    package func deliver(_ bytes: UnsafeRawBufferPointer, to session: OpaquePointer) -> String? {
        inNGHTTP2Call = true
        let consumed = nghttp2_session_mem_recv(session, bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), bytes.count)
        inNGHTTP2Call = false
        return consumed < 0 ? String(cString: nghttp2_strerror(Int32(consumed))) : nil
    }

    /// Writes what is buffered, then pulls and writes frames until nghttp2 has none left or the
    /// socket is full.
    package func flush(_ session: OpaquePointer) -> FlushOutcome {
        while true {
            switch writePending() {
            case .idle: break
            case let other: return other
            }
            while pending.count < Self.gatherLimit {
                var data: UnsafePointer<UInt8>?
                inNGHTTP2Call = true
                let length = nghttp2_session_mem_send(session, &data)
                inNGHTTP2Call = false
                if length < 0 { return .failed("nghttp2 send failed: \(String(cString: nghttp2_strerror(Int32(length))))") }
                if length == 0 { break }
                pending.append(contentsOf: UnsafeRawBufferPointer(start: data, count: length))
            }
            if pending.isEmpty {
                setWritableInterest(false)
                return .idle
            }
        }
    }

    /// HTTP/1.1, which has no nghttp2 session: the same loop as `flush(_:)`, with `produce`
    /// appending the next bytes to send (nothing when it has none now).
    package func flush(producing produce: (inout [UInt8]) -> Void) -> FlushOutcome {
        while true {
            switch writePending() {
            case .idle: break
            case let other: return other
            }
            while pending.count < Self.gatherLimit {
                let before = pending.count
                produce(&pending)
                if pending.count == before { break }
            }
            if pending.isEmpty {
                setWritableInterest(false)
                return .idle
            }
        }
    }

    private func writePending() -> FlushOutcome {
        guard pendingIndex < pending.count else { return .idle }
        let written = pending.withUnsafeBytes { all in transmit(UnsafeRawBufferPointer(rebasing: all[pendingIndex...])) }
        switch written {
        case .failure(let reason): return .failed(reason.message)
        case .success(let count): pendingIndex += count
        }
        guard pendingIndex == pending.count else {
            setWritableInterest(true)
            return .blocked
        }
        pending.removeAll(keepingCapacity: pending.capacity <= 1 << 20)
        pendingIndex = 0
        return .idle
    }

    package struct WriteFailure: Error {
        let message: String
    }

    /// Bytes the socket accepted, possibly fewer than offered.
    private func transmit(_ bytes: UnsafeRawBufferPointer) -> Result<Int, WriteFailure> {
        if let tls {
            let rv = SSL_write(tls, bytes.baseAddress, Int32(bytes.count))
            if rv > 0 { return .success(Int(rv)) }
            switch SSL_get_error(tls, rv) {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return .success(0)
            default:
                ERR_clear_error()
                return .failure(WriteFailure(message: "TLS write failed"))
            }
        }
        var offset = 0
        while offset < bytes.count {
            let rv = Glibc.send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if rv >= 0 {
                offset += rv
                continue
            }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { break }
            return .failure(WriteFailure(message: "write failed: \(String(cString: strerror(errno)))"))
        }
        return .success(offset)
    }

    package func setWritableInterest(_ wantWrite: Bool) {
        guard wantWrite != wantsWritable, !released else { return }
        wantsWritable = wantWrite
        updateInterest()
    }

    /// HTTP/1.1 stops reading while pipelined requests wait, so TCP pushes back on the client.
    package func setReadableInterest(_ wantRead: Bool) {
        guard wantRead != wantsReadable, !released else { return }
        wantsReadable = wantRead
        updateInterest()
    }

    private func updateInterest() {
        let read = wantsReadable ? EPOLLIN.rawValue | EPOLLRDHUP.rawValue : 0
        loop.modify(fd, events: wantsWritable ? read | EPOLLOUT.rawValue : read)
    }

    /// Ends our side of the connection (TLS close_notify, then FIN) while still reading, so a
    /// client still sending gets our last response instead of a reset.
    package func shutdownWrite() {
        guard !released else { return }
        if let tls {
            _ = SSL_shutdown(tls)
            ERR_clear_error()
        }
        _ = Glibc.shutdown(fd, Int32(SHUT_WR))
    }

    /// Deregisters and closes the socket and frees TLS state. Idempotent.
    package func release() {
        guard !released else { return }
        released = true
        loop.deregister(fd)
        if let tls {
            SSL_free(tls)
            self.tls = nil
        }
        Glibc.close(fd)
    }
}
