/// The life of one accepted server connection as a value: lifecycle events in, actions out.
/// `HTTP2Connection` performs them (TLS, the nghttp2 session, the socket, the hand-over to
/// `HTTP1Connection`).
///
/// `tlsHandshake` (TLS) or `detectingProtocol` (cleartext) → `http2` or `handedToHTTP1`;
/// `http2` → `http2Draining` (shutdown notice sent) → `http2FinalGoAwaySent`; any → `closed`.
/// A shutdown notice may be queued before the protocol is known: it is sent once the client
/// turns out to speak HTTP/2, which then starts in `http2Draining`.
struct ServerConnectionStateMachine: Equatable {
    enum State: Equatable {
        /// TLS: the handshake runs; ALPN then says h2 or HTTP/1.1.
        case tlsHandshake(noticeQueued: Bool)
        /// Cleartext: matching the client preface, which may arrive a byte at a time. Nothing is
        /// sent before, so a client that turns out to speak HTTP/1.1 gets only HTTP/1.1.
        case detectingProtocol(prefaceBytesMatched: Int, noticeQueued: Bool)
        case http2
        /// Graceful shutdown, step 1: the shutdown notice (a GOAWAY with the largest stream ID) is out.
        case http2Draining
        /// Step 2 (or the idle timeout): the GOAWAY naming the last stream processed is queued.
        /// nghttp2 stops wanting to read or write once the remaining streams finish.
        case http2FinalGoAwaySent
        /// The socket now belongs to an `HTTP1Connection`.
        case handedToHTTP1
        case closed
    }

    enum ReceiveAction: Equatable {
        /// Hand the bytes to nghttp2.
        case deliver
        /// The bytes diverge from the HTTP/2 preface: hand the socket to HTTP/1.1, which parses
        /// these bytes (the preface bytes matched before included) first.
        case switchToHTTP1(replaying: [UInt8])
    }

    enum GoAwayAction: Equatable {
        case none
        /// Not known to speak HTTP/2 yet: there is nothing to tell it, close.
        case close
        /// Queue the final GOAWAY, then write.
        case submitFinalGoAway
        /// The final GOAWAY is queued already: just write.
        case flush
    }

    static let clientPreface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    private(set) var state: State

    init(tls: Bool) {
        state = tls ? .tlsHandshake(noticeQueued: false) : .detectingProtocol(prefaceBytesMatched: 0, noticeQueued: false)
    }

    /// Closed, or handed to HTTP/1.1: this connection is done.
    var isClosed: Bool { state == .closed || state == .handedToHTTP1 }

    var isHandshaking: Bool {
        if case .tlsHandshake = state { return true }
        return false
    }

    /// The client showed it speaks HTTP/2: output may be written.
    var speaksHTTP2: Bool {
        switch state {
        case .http2, .http2Draining, .http2FinalGoAwaySent: true
        case .tlsHandshake, .detectingProtocol, .handedToHTTP1, .closed: false
        }
    }

    /// A shutdown notice or final GOAWAY has been queued.
    var isDraining: Bool {
        switch state {
        case .tlsHandshake(let queued), .detectingProtocol(_, let queued): queued
        case .http2Draining, .http2FinalGoAwaySent: true
        case .http2, .handedToHTTP1, .closed: false
        }
    }

    // MARK: Events

    /// The TLS handshake completed. Returns false when ALPN chose HTTP/1.1 (or nothing): hand
    /// the socket over.
    mutating func handshakeCompleted(alpnH2: Bool) -> Bool {
        guard case .tlsHandshake(let noticeQueued) = state else {
            preconditionFailure("the TLS handshake completed in \(state)")
        }
        state = alpnH2 ? (noticeQueued ? .http2Draining : .http2) : .handedToHTTP1
        return alpnH2
    }

    /// Bytes read from the client (decrypted, with TLS).
    mutating func received(_ bytes: UnsafeRawBufferPointer) -> ReceiveAction {
        switch state {
        case .detectingProtocol(var matched, let noticeQueued):
            for (index, byte) in bytes.enumerated() {
                if byte != Self.clientPreface[matched] {
                    state = .handedToHTTP1
                    return .switchToHTTP1(replaying: Array(Self.clientPreface[0..<matched]) + Array(bytes[index...]))
                }
                matched += 1
                if matched == Self.clientPreface.count {
                    state = noticeQueued ? .http2Draining : .http2
                    return .deliver
                }
            }
            state = .detectingProtocol(prefaceBytesMatched: matched, noticeQueued: noticeQueued)
            return .deliver
        case .http2, .http2Draining, .http2FinalGoAwaySent:
            return .deliver
        case .tlsHandshake, .handedToHTTP1, .closed:
            preconditionFailure("bytes received in \(state)")
        }
    }

    /// About to write queued frames. Returns true when the final GOAWAY must be queued first: the
    /// connection drains and `hasOpenStreams` is false.
    mutating func willWrite(hasOpenStreams: Bool) -> Bool {
        precondition(speaksHTTP2, "writing before the client spoke HTTP/2, in \(state)")
        guard state == .http2Draining, !hasOpenStreams else { return false }
        state = .http2FinalGoAwaySent
        return true
    }

    /// Graceful shutdown, step 1. Returns true when the shutdown notice is to be queued now.
    mutating func shutdownNotice() -> Bool {
        switch state {
        case .tlsHandshake(false): state = .tlsHandshake(noticeQueued: true)
        case .detectingProtocol(let matched, false): state = .detectingProtocol(prefaceBytesMatched: matched, noticeQueued: true)
        case .http2: state = .http2Draining
        default: return false
        }
        return true
    }

    /// Graceful shutdown, step 2, or the idle timeout.
    mutating func goAway() -> GoAwayAction {
        switch state {
        case .tlsHandshake, .detectingProtocol: return .close
        case .http2, .http2Draining:
            state = .http2FinalGoAwaySent
            return .submitFinalGoAway
        case .http2FinalGoAwaySent: return .flush
        case .handedToHTTP1, .closed: return .none
        }
    }

    /// Returns true when the connection was open: tear it down now.
    mutating func close() -> Bool {
        guard !isClosed else { return false }
        state = .closed
        return true
    }
}
