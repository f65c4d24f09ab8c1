import SluiceIO
import CLinux
import Glibc
import Logging

/// An HTTP/1.1 connection on the HTTP/2 port: a cleartext client whose first bytes were not the
/// HTTP/2 preface, or a TLS client that negotiated ALPN `http/1.1` (or none). It serves the
/// router's plain HTTP handlers one request at a time; pipelined requests wait in `input`, in
/// order, and reading pauses once too much waits. gRPC and Connect need HTTP/2 and are refused.
/// Counted, idled out and drained like HTTP/2 connections. Loop-confined.
final class HTTP1Connection: Selectable {
    private let io: SessionIO
    unowned let loop: EventLoop
    let server: HTTP2Server
    private let parser: HTTP1RequestParser
    /// Received and not parsed yet: the requests behind the one being answered.
    private var input: [UInt8] = []
    private var inputIndex = 0
    private var readingPaused = false
    /// The response being sent; nothing more is parsed until it is out.
    private var response: HTTP1Response?
    /// A `100 Continue` to send before the response.
    private var interim: [UInt8] = []
    /// False once the connection will take no more requests (`connection: close`, an error, drain).
    private var acceptsRequests = true
    private var draining = false
    /// Our side is shut down; reading only to let the last response reach a client still sending.
    private var lingering = false
    private var lingerTimer: TimerID?
    private var closed = false
    /// When the last request arrived or response finished: idle connections close after the idle
    /// timeout, and so does a client that dribbles one request for that long.
    private var lastActivity = ContinuousClock.now

    /// Bytes of pipelined requests held while a response is in flight before reading pauses.
    static let inputLimit = 64 * 1024

    init(io: SessionIO, loop: EventLoop, server: HTTP2Server) {
        self.io = io
        self.loop = loop
        self.server = server
        let limits = server.configuration.limits
        parser = HTTP1RequestParser(maxHeaderBytes: limits.maxHeaderListSize, maxBodyBytes: limits.maxMessageSize)
        loop.reassign(io.fd, to: self)
    }

    /// Takes over from the protocol detection: `bytes` were read already.
    func start(replaying bytes: [UInt8]) {
        input = bytes
        readAvailable()
        if !closed { flush() }
    }

    // MARK: Reading

    func handleEvents(_ events: UInt32) {
        if events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 && events & EPOLLIN.rawValue == 0 {
            close(reason: "socket error or hang-up")
            return
        }
        if lingering {
            discardInput()
            return
        }
        if events & (EPOLLIN.rawValue | EPOLLRDHUP.rawValue) != 0 { readAvailable() }
        if closed { return }
        flush()
    }

    private func readAvailable() {
        let buffer = server.readBuffer(for: loop)
        // A bounded number of reads per wakeup keeps one busy connection from starving the loop.
        for _ in 0..<8 {
            guard input.count - inputIndex < Self.inputLimit else {
                readingPaused = true
                io.setReadableInterest(false)
                break
            }
            let count = io.receive(into: buffer)
            if count > 0 {
                input.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
                if count < buffer.count { break }
            } else if count == 0 {
                // As for HTTP/2 (and Go's and nginx's HTTP/1 servers): a client that closes has
                // gone, and its response is abandoned. Half-closing clients are not served.
                return close(reason: "peer closed the connection")
            } else {
                break
            }
        }
        processInput()
    }

    /// Parses and starts requests until one is in flight or the input runs out.
    private func processInput() {
        parsing: while response == nil, acceptsRequests, !closed, inputIndex < input.count {
            let (consumed, outcome) = input.withUnsafeBytes { parser.parse(UnsafeRawBufferPointer(rebasing: $0[inputIndex...])) }
            inputIndex += consumed
            switch outcome {
            case .needMore:
                if consumed == 0 { break parsing }
            case .head(let request, let contentLength):
                handleExpectation(request, contentLength: contentLength)
            case .request(let request):
                lastActivity = .now
                // After CONNECT, http_parser takes the rest for another protocol: no more requests.
                if !request.keepAlive || request.method == "CONNECT" { acceptsRequests = false }
                respond(to: request)
            case .failed(let failure):
                reject(failure)
            }
        }
        if inputIndex == input.count {
            input.removeAll(keepingCapacity: input.capacity <= Self.inputLimit)
            inputIndex = 0
        }
        if readingPaused && input.count - inputIndex < Self.inputLimit && acceptsRequests {
            readingPaused = false
            io.setReadableInterest(true)
        }
        if response == nil && !acceptsRequests && !closed { endConnection() }
    }

    /// `Expect: 100-continue` (RFC 9110 §10.1.1): a client waiting to send its body learns now
    /// whether it is wanted; any other expectation cannot be met.
    private func handleExpectation(_ request: HTTP1Request, contentLength: UInt64?) {
        guard let expectation = request.header("expect"), request.versionMinor >= 1 else { return }
        guard expectation.lowercased() == "100-continue" else {
            acceptsRequests = false
            let body = "Unsupported Expect: \(expectation). Only 100-continue is understood.\n"
            return respondFixed(to: request, status: 417, headers: Self.textHeaders, body: body)
        }
        if case .refuse(let status, let headers, let body) = route(request) {
            // Refused whatever the body says: answer now and close instead of reading the body.
            acceptsRequests = false
            respondFixed(to: request, status: status, headers: headers, body: body)
        } else if contentLength != 0 {
            interim = Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)
        }
    }

    private func respond(to request: HTTP1Request) {
        switch route(request) {
        case .refuse(let status, let headers, let body):
            respondFixed(to: request, status: status, headers: headers, body: body)
        case .handler(let handler, let httpRequest):
            let box = LoopBound(self, loop: loop)
            let capacity = server.configuration.limits.streamQueueBytes
            let outbound = StreamOutbound(
                capacity: capacity, framing: .raw, endStreamEnvelope: nil,
                messageDelivered: server.configuration.messageDelivered
            ) { [loop] in
                loop.execute { box.value.flush() }
            }
            let task = outbound.runHTTPHandler(handler, httpRequest, on: loop)
            response = HTTP1Response(.handler(outbound, task), method: request.method, versionMinor: request.versionMinor)
        }
    }

    private func respondFixed(to request: HTTP1Request, status: Int, headers: [(String, String)], body: String) {
        let source = HTTP1Response.Source.fixed(status: status, headers: headers, body: Array(body.utf8))
        response = HTTP1Response(source, method: request.method, versionMinor: request.versionMinor)
    }

    /// For the connection's own short answers, which may echo parts of the request.
    static let textHeaders = [("content-type", "text/plain; charset=utf-8"), ("x-content-type-options", "nosniff")]

    /// A request the parser refused: answer and close (the rest of the input cannot be trusted).
    private func reject(_ failure: HTTP1RequestParser.Failure) {
        acceptsRequests = false
        let limits = server.configuration.limits
        let (status, body) =
            switch failure {
            case .malformed(let reason): (400, "Malformed HTTP/1.1 request (\(reason)).\n")
            case .headersTooLarge: (431, "The request line and headers exceed the limit of \(limits.maxHeaderListSize) bytes.\n")
            case .bodyTooLarge: (413, "The request body exceeds the limit of \(limits.maxMessageSize) bytes.\n")
            }
        respondFixed(to: HTTP1Request(), status: status, headers: Self.textHeaders, body: body)
    }

    // MARK: Writing

    /// Writes what is ready; called after reads, on EPOLLOUT, and when a handler queued output.
    func flush() {
        let scratch = server.readBuffer(for: loop)
        while !closed {
            let outcome = io.flush { out in
                if !interim.isEmpty {
                    out += interim
                    interim = []
                } else if let response {
                    response.produce(into: &out, scratch: scratch, closing: !acceptsRequests || draining)
                }
            }
            switch outcome {
            case .failed(let reason): return close(reason: reason)
            case .blocked: return
            case .idle: break
            }
            guard let finished = response, finished.complete else { return }
            response = nil
            lastActivity = .now
            if finished.closesConnection || draining { acceptsRequests = false }
            processInput()
        }
    }

    // MARK: Lifecycle

    /// Everything is answered and no more requests are taken: send FIN, then read and discard
    /// for a moment, so a client still sending does not turn our close into a reset that would
    /// destroy the response in its receive buffer.
    private func endConnection() {
        guard !lingering else { return }
        lingering = true
        input = []
        inputIndex = 0
        io.shutdownWrite()
        io.setReadableInterest(true)
        lingerTimer = loop.scheduleTimer(after: .seconds(2)) { [weak self] in
            self?.lingerTimer = nil
            self?.close(reason: "closed after its last response")
        }
    }

    private func discardInput() {
        let buffer = server.readBuffer(for: loop)
        for _ in 0..<8 {
            let count = io.receive(into: buffer)
            if count == 0 { return close(reason: "closed after its last response") }
            if count < 0 { return }
        }
    }

    /// Idle timeout: no response in flight and no complete request for a while.
    func closeIfIdle(before cutoff: ContinuousClock.Instant) {
        if response == nil && lastActivity < cutoff { close(reason: "idle timeout") }
    }

    /// Graceful shutdown: an idle connection closes now; one with a response in flight finishes
    /// it (with `connection: close` if its head has not gone out yet) and then closes.
    func beginDrain() {
        guard !closed else { return }
        draining = true
        acceptsRequests = false
        if response == nil { endConnection() }
    }

    /// The drain timeout passed: cut the response in flight short.
    func abortResponse(_ message: String) {
        response?.abort(message)
        flush()
    }

    func close(reason: String) {
        guard !closed else { return }
        closed = true
        server.logger.trace("HTTP/1.1 connection closed: \(reason)")
        if let lingerTimer { loop.cancelTimer(lingerTimer) }
        response?.connectionClosed()
        response = nil
        io.release()
        server.connectionClosed(self, on: loop)
    }
}
