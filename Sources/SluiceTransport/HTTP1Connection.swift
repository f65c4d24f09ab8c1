import CLinux
import Glibc
import Logging
import SluiceIO
import SluiceWire

/// An HTTP/1.1 connection on the HTTP/2 port: a cleartext client whose first bytes were not the
/// HTTP/2 preface, or a TLS client that negotiated ALPN `http/1.1` (or none). It serves the
/// router's plain HTTP handlers one request at a time; pipelined requests wait in `input`, in
/// order, and reading pauses once too much waits. gRPC and Connect need HTTP/2 and are refused.
/// Counted, idled out and drained like HTTP/2 connections. Its lifecycle is an
/// `HTTP1ConnectionStateMachine`; this class performs what it decides. Loop-confined.
final class HTTP1Connection: Selectable {
    private let io: SessionIO
    unowned let loop: EventLoop
    let server: HTTP2Server
    private let parser: HTTP1RequestParser
    /// Received and not parsed yet: the requests behind the one being answered.
    private var input: [UInt8] = []
    private var inputIndex = 0
    private var machine: HTTP1ConnectionStateMachine
    /// The response being sent (while the machine is `responding`).
    private var response: HTTP1Response?
    /// A `100 Continue` to send before the response.
    private var interim: [UInt8] = []
    private var lingerTimer: TimerID?
    /// The client's call timeout for the RPC being answered.
    private var deadlineTimer: TimerID?
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
        machine = HTTP1ConnectionStateMachine(limits: .init(maxHeaderBytes: limits.maxHeaderListSize, maxBodyBytes: limits.maxMessageSize))
        loop.reassign(io.fd, to: self)
    }

    /// Takes over from the protocol detection: `bytes` were read already.
    func start(replaying bytes: [UInt8]) {
        input = bytes
        readAvailable()
        if machine.state != .closed { flush() }
    }

    // MARK: Reading

    func handleEvents(_ events: UInt32) {
        if events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 && events & EPOLLIN.rawValue == 0 {
            close(reason: "socket error or hang-up")
            return
        }
        if machine.state == .lingering {
            discardInput()
            return
        }
        if events & (EPOLLIN.rawValue | EPOLLRDHUP.rawValue) != 0 { readAvailable() }
        if machine.state == .closed { return }
        flush()
    }

    private func readAvailable() {
        let buffer = server.readBuffer(for: loop)
        // A bounded number of reads per wakeup keeps one busy connection from starving the loop.
        for _ in 0..<8 {
            guard input.count - inputIndex < Self.inputLimit else {
                machine.backlogFull()
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
        parsing: while machine.mayParse, inputIndex < input.count {
            let (consumed, outcome) = input.withUnsafeBytes { parser.parse(UnsafeRawBufferPointer(rebasing: $0[inputIndex...])) }
            inputIndex += consumed
            switch outcome {
            case .needMore:
                if consumed == 0 { break parsing }
            case .head(let request, let contentLength):
                handleExpectation(request, contentLength: contentLength)
            case .request(let request):
                lastActivity = .now
                machine.requestReceived(request)
                respond(to: request)
            case .failed(let failure):
                // Answer and close: the rest of the input cannot be trusted.
                let (status, body) = machine.parseFailed(failure)
                if failure == .bodyTooLarge, let response = routeBodyTooLarge() {
                    respondFixed(to: HTTP1Request(), status: response.status, headers: response.headers, body: response.body)
                } else {
                    respondFixed(to: HTTP1Request(), status: status, headers: Self.textHeaders, body: body)
                }
            }
        }
        if inputIndex == input.count {
            input.removeAll(keepingCapacity: input.capacity <= Self.inputLimit)
            inputIndex = 0
        }
        if input.count - inputIndex < Self.inputLimit && machine.backlogDrained() {
            io.setReadableInterest(true)
        }
    }

    /// The 413 of the route whose request body is over the limit, when it has its own (an API's error shape).
    private func routeBodyTooLarge() -> HTTPFixedResponse? {
        guard let (path, _) = Self.splitTarget(parser.headTarget), let response = server.router.bodyTooLargeResponse(for: path) else {
            return nil
        }
        return response(HTTP2StreamStateMachine.bodyTooLargeMessage(limit: server.configuration.limits.maxMessageSize))
    }

    /// `Expect` (RFC 9110 §10.1.1), before the body is read.
    private func handleExpectation(_ request: HTTP1Request, contentLength: UInt64?) {
        switch machine.headReceived(request, contentLength: contentLength) {
        case .none: break
        case .rejectExpectation(let body):
            respondFixed(to: request, status: 417, headers: Self.textHeaders, body: body)
        case .routeBeforeBody(let sendContinue):
            if case .refuse(let status, let headers, let body) = route(request) {
                // Refused whatever the body says: answer now and close instead of reading the body.
                machine.refusedBeforeBody()
                respondFixed(to: request, status: status, headers: headers, body: body)
            } else if sendContinue {
                interim = Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)
            }
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
            assert(machine.isResponding, "a response starts only after the machine's transition to responding")
            response = HTTP1Response(
                .handler(outbound, task), method: request.method, versionMinor: request.versionMinor, extraHeaders: corsHeaders(request))
        case .rpc(let decision, let path, let headers):
            startRPC(decision, path: path, headers: headers, request: request)
        }
    }

    /// A Connect or gRPC-Web call: the whole request is in, so its message is decoded at once; the response
    /// streams chunked, its status in the body's last message.
    private func startRPC(
        _ decision: RPCCallHead.Decision, path: String, headers: [(name: String, value: String)], request: HTTP1Request
    ) {
        var encodings = EncodingNegotiation()
        let rpcProtocol: RPCProtocol
        let outcome: Result<(message: [UInt8], deadline: RPCDeadline?), RPCError>
        switch decision {
        case .fail(let failed, let code, let message):
            rpcProtocol = failed
            outcome = .failure(RPCError(code, message))
        case .start(let started, let negotiated, let deadline):
            rpcProtocol = started
            encodings = negotiated
            let decoder = EnvelopeDecoder(maxMessageSize: server.configuration.limits.maxMessageSize, encoding: negotiated.request)
            outcome = RPCCallHead.singleMessage(of: request.body, decoder: decoder, base64: started == .grpcWebText).map { ($0, deadline) }
        }
        let box = LoopBound(self, loop: loop)
        let configuration = server.configuration
        let outbound = StreamOutbound(
            capacity: configuration.limits.streamQueueBytes, framing: rpcProtocol == .grpcWebText ? .base64Envelope : .envelope,
            endStreamEnvelope: { code, message in rpcProtocol.endOfCallFrame(code, message) ?? [] },
            responseEncoding: encodings.response, compressMinBytes: configuration.compressMinBytes,
            messageDelivered: configuration.messageDelivered
        ) { [loop] in
            loop.execute { box.value.flush() }
        }
        try? outbound.setHead(RPCCallHead.responseHead(rpcProtocol, contentType: request.header("content-type"), encodings: encodings))
        var task: Task<Void, Never>?
        switch outcome {
        case .failure(let error):
            outbound.finish(error.code, error.message)
        case .success(let call):
            guard let handler = server.router.handler(for: path)?.handler else {
                preconditionFailure("an RPC starts only on a path with an RPC handler")
            }
            let workLoop = server.placeCall(preferring: loop)
            let rpcRequest = RPCRequest(
                path: path, rpcProtocol: rpcProtocol, headers: headers, message: call.message,
                deadline: call.deadline.map { .now + $0.timeout }, executor: workLoop)
            task = outbound.runRPCHandler(handler, rpcRequest, on: loop, server: server)
            if let deadline = call.deadline { startDeadline(deadline) }
        }
        assert(machine.isResponding, "a response starts only after the machine's transition to responding")
        response = HTTP1Response(
            .rpc(outbound, task), method: request.method, versionMinor: request.versionMinor, extraHeaders: corsHeaders(request))
    }

    private func startDeadline(_ deadline: RPCDeadline) {
        deadlineTimer = loop.scheduleTimer(after: deadline.timeout + deadline.backstop) { [weak self] in
            guard let self else { return }
            deadlineTimer = nil
            response?.abort(.deadlineExceeded, "deadline exceeded: the call ran longer than its \(deadline.header) of \(deadline.value)")
            flush()
        }
    }

    private func cancelDeadline() {
        if let deadlineTimer { loop.cancelTimer(deadlineTimer) }
        deadlineTimer = nil
    }

    private func respondFixed(to request: HTTP1Request, status: Int, headers: [(String, String)], body: String) {
        let source = HTTP1Response.Source.fixed(status: status, headers: headers, body: Array(body.utf8))
        assert(machine.isResponding, "a response starts only after the machine's transition to responding")
        response = HTTP1Response(source, method: request.method, versionMinor: request.versionMinor, extraHeaders: corsHeaders(request))
    }

    /// CORS headers for an allowed origin's response (preflights are answered in `route`).
    private func corsHeaders(_ request: HTTP1Request) -> [(String, String)] {
        guard case .allow(let headers) = server.configuration.cors.decide(method: request.method, header: request.header) else { return [] }
        return headers
    }

    /// For the connection's own short answers, which may echo parts of the request.
    static let textHeaders = [("content-type", "text/plain; charset=utf-8"), ("x-content-type-options", "nosniff")]

    // MARK: Writing

    /// Writes what is ready; called after reads, on EPOLLOUT, and when a handler queued output.
    func flush() {
        let scratch = server.readBuffer(for: loop)
        while machine.state != .closed {
            let outcome = io.flush { out in
                if !interim.isEmpty {
                    out += interim
                    interim = []
                } else if let response {
                    response.produce(into: &out, scratch: scratch, closing: machine.respondingLast)
                }
            }
            switch outcome {
            case .failed(let reason): return close(reason: reason)
            case .blocked: return
            case .idle: break
            }
            guard let finished = response, finished.complete else { return }
            response = nil
            cancelDeadline()
            lastActivity = .now
            switch machine.responseFinished(closesConnection: finished.closesConnection) {
            case .readNext: processInput()
            case .endConnection: endConnection()
            }
        }
    }

    // MARK: Lifecycle

    /// Everything is answered and no more requests are taken (the machine is `lingering`): send
    /// FIN, then read and discard for a moment, so a client still sending does not turn our close
    /// into a reset that would destroy the response in its receive buffer.
    private func endConnection() {
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
        if machine.mayCloseWhenIdle && lastActivity < cutoff { close(reason: "idle timeout") }
    }

    /// Graceful shutdown: an idle connection closes now; one with a response in flight finishes
    /// it (with `connection: close` if its head has not gone out yet) and then closes.
    func beginDrain() {
        if machine.beginDrain() { endConnection() }
    }

    /// The drain timeout passed: cut the response in flight short.
    func abortResponse(_ message: String) {
        response?.abort(.unavailable, message)
        flush()
    }

    func close(reason: String) {
        guard machine.close() else { return }
        server.logger.trace("HTTP/1.1 connection closed: \(reason)")
        if let lingerTimer { loop.cancelTimer(lingerTimer) }
        cancelDeadline()
        response?.connectionClosed()
        response = nil
        io.release()
        server.connectionClosed(self, on: loop)
    }
}
