import CNGHTTP2
import SluiceIO
import SluiceWire

/// One request stream: feeds nghttp2's request events to its `HTTP2StreamStateMachine` and
/// performs what it decides (the outbound queue, the handler task, the deadline timer, the
/// response submitted to nghttp2). Loop-confined, like its connection.
final class HTTP2Stream {
    let id: Int32
    unowned let connection: HTTP2Connection

    private var machine: HTTP2StreamStateMachine
    private(set) var outbound: StreamOutbound?
    private var deadline: ContinuousClock.Instant?
    private var deadlineTimer: TimerID?
    private var handlerTask: Task<Void, Never>?
    /// The handler the router chose, run once the request is complete.
    private var httpHandler: HTTPHandler?
    private var rpcHandler: RPCHandler?
    /// CORS headers for an allowed origin's response.
    private var corsHeaders: [(String, String)] = []

    init(id: Int32, connection: HTTP2Connection) {
        self.id = id
        self.connection = connection
        let limits = connection.server.configuration.limits
        machine = HTTP2StreamStateMachine(limits: .init(maxHeaderListSize: limits.maxHeaderListSize, maxMessageSize: limits.maxMessageSize))
    }

    var path: String? { machine.path }
    /// The client has sent END_STREAM.
    var requestComplete: Bool { machine.requestEnded }
    var responseSubmitted: Bool { machine.responseSubmitted }

    // MARK: Request

    /// Returns false when the header list exceeds the limit (the stream is then reset).
    func addHeader(name: String, value: String) -> Bool {
        machine.receiveHeader(name: name, value: value)
    }

    func headersComplete() {
        let router = connection.server.router
        let rpcRoute = machine.path.flatMap { router.handler(for: $0) }
        let configuration = connection.server.configuration
        let plainRoute = router.httpHandler(for: machine.routePath)
        // Connect unary is served as plain HTTP: its status is an HTTP status, chosen when the handler ends. On a
        // path nothing serves it is UNIMPLEMENTED, as Connect clients expect.
        let isConnectUnary =
            ConnectUnary.isUnaryRequest(method: machine.method, contentType: machine.contentType) && (rpcRoute != nil || plainRoute == nil)
        let httpRoute =
            isConnectUnary
            ? ConnectUnary.handler(
                rpcRoute?.handler, maxMessageSize: configuration.limits.maxMessageSize, compressMinBytes: configuration.compressMinBytes)
            : plainRoute
        let action: HTTP2StreamStateMachine.HeadersAction
        switch connection.server.configuration.cors.decide(method: machine.method, header: machine.header) {
        case .preflight(let headers):
            action = machine.answerPreflight(headers)
        case .allow(let headers):
            corsHeaders = headers
            action = machine.headersComplete(
                httpRoute: httpRoute != nil, rpcRouteEnforcesDeadline: rpcRoute?.enforcesDeadline,
                bodyTooLarge: isConnectUnary ? nil : router.bodyTooLargeResponse(for: machine.routePath))
        case .none:
            action = machine.headersComplete(
                httpRoute: httpRoute != nil, rpcRouteEnforcesDeadline: rpcRoute?.enforcesDeadline,
                bodyTooLarge: isConnectUnary ? nil : router.bodyTooLargeResponse(for: machine.routePath))
        }
        switch action {
        case .none: break
        case .startHTTP:
            httpHandler = httpRoute
            outbound = makeOutbound(framing: .raw, rpcProtocol: nil)
        case .startRPC(let rpcProtocol, let deadline):
            rpcHandler = rpcRoute?.handler
            outbound = makeOutbound(framing: rpcProtocol == .grpcWebText ? .base64Envelope : .envelope, rpcProtocol: rpcProtocol)
            if let deadline { startDeadline(deadline) }
        case .failRPC(let rpcProtocol, let code, let message):
            outbound = makeOutbound(framing: rpcProtocol == .grpcWebText ? .base64Envelope : .envelope, rpcProtocol: rpcProtocol)
            fail(code, message)
        case .respondPlain:
            submitResponse()
        }
    }

    private func makeOutbound(framing: StreamOutbound.Framing, rpcProtocol: RPCProtocol?) -> StreamOutbound {
        var endOfCallFrame: (@Sendable (StatusCode, String) -> [UInt8])?
        if let rpcProtocol, rpcProtocol != .grpc {
            endOfCallFrame = { code, message in rpcProtocol.endOfCallFrame(code, message) ?? [] }
        }
        let box = LoopBound(connection, loop: connection.loop)
        let streamID = id
        let configuration = connection.server.configuration
        return StreamOutbound(
            capacity: configuration.limits.streamQueueBytes,
            framing: framing,
            endStreamEnvelope: endOfCallFrame,
            responseEncoding: machine.encodings.response,
            compressMinBytes: configuration.compressMinBytes,
            messageDelivered: configuration.messageDelivered
        ) { [loop = connection.loop] in
            loop.execute { box.value.streamHasOutput(streamID) }
        }
    }

    private func startDeadline(_ deadline: HTTP2StreamStateMachine.Deadline) {
        self.deadline = .now + deadline.timeout
        deadlineTimer = connection.loop.scheduleTimer(after: deadline.timeout + deadline.backstop) { [weak self] in
            self?.deadlineTimer = nil
            self?.end(.deadlineExceeded, "deadline exceeded: the call ran longer than its \(deadline.header) of \(deadline.value)")
        }
    }

    func receiveData(_ bytes: UnsafeRawBufferPointer) {
        switch machine.receiveData(bytes) {
        case .none: break
        case .fail(let code, let message): fail(code, message)
        case .respondPlain: submitResponse()
        }
    }

    func endOfRequest() {
        switch machine.endOfRequest() {
        case .none: break
        case .fail(let code, let message): fail(code, message)
        case .runHTTPHandler(let request):
            guard let outbound, let handler = httpHandler else {
                preconditionFailure("an HTTP stream runs its handler only after its route and outbound queue were set up")
            }
            handlerTask = outbound.runHTTPHandler(handler, request, on: connection.loop)
        case .runRPCHandler(let message):
            guard let outbound, let path = machine.path, let handler = rpcHandler, case .rpc(let rpcProtocol)? = machine.route
            else {
                preconditionFailure("an RPC stream runs its handler only after its route and outbound queue were set up")
            }
            runRPCHandler(handler, path: path, rpcProtocol: rpcProtocol, message: message, outbound: outbound)
        }
    }

    private func runRPCHandler(
        _ handler: @escaping RPCHandler, path: String, rpcProtocol: RPCProtocol, message: [UInt8], outbound: StreamOutbound
    ) {
        let server = connection.server
        let workLoop = server.placeCall(preferring: connection.loop)
        let request = RPCRequest(
            path: path, rpcProtocol: rpcProtocol, headers: machine.headers, message: message, deadline: deadline,
            executor: workLoop
        )
        handlerTask = outbound.runRPCHandler(handler, request, on: connection.loop, server: server)
    }

    // MARK: Ending

    /// Ends the call now (deadline, shutdown): queued messages are dropped, the handler is cancelled.
    func end(_ code: StatusCode, _ message: String) {
        guard machine.end(), let outbound, outbound.abort(code, message) else { return }
        handlerTask?.cancel()
        streamHasOutput()
    }

    private func fail(_ code: StatusCode, _ message: String) {
        outbound?.finish(code, message)
        streamHasOutput()
    }

    /// The stream closed (completed, or reset by the client).
    func closed(errorCode: UInt32) {
        tearDown(RPCError(.cancelled, "the client cancelled the call (RST_STREAM \(errorCode))"), disconnect: .reset(errorCode: errorCode))
    }

    func connectionClosed() {
        tearDown(RPCError(.cancelled, "the client's connection closed"), disconnect: .connectionLost)
    }

    private func tearDown(_ reason: RPCError, disconnect: RPCDisconnect) {
        machine.close()
        if let deadlineTimer { connection.loop.cancelTimer(deadlineTimer) }
        deadlineTimer = nil
        outbound?.close(reason, disconnect: disconnect)
        handlerTask?.cancel()
    }

    // MARK: Response

    /// Called on the loop whenever the handler queued bytes or the call ended.
    func streamHasOutput() {
        guard let session = connection.session else { return }
        switch machine.outputReady() {
        case .none: break
        case .resumeData: nghttp2_session_resume_data(session, id)
        case .submitHeadIfReady(let trailersOnlyAllowed):
            if let outbound, let shape = outbound.responseShape(trailersOnlyAllowed: trailersOnlyAllowed) {
                submitResponse(trailersOnlyStatus: shape.trailersOnly ? shape.status : nil, httpHead: outbound.head)
            }
        }
        connection.scheduleFlush()
    }

    private func submitResponse(trailersOnlyStatus: (code: StatusCode, message: String)? = nil, httpHead: [(String, String)]? = nil) {
        guard let session = connection.session, !machine.responseSubmitted else { return }
        let head = machine.responseHead(trailersOnlyStatus: trailersOnlyStatus, httpHead: httpHead)
        withNameValues(head.fields.map { ($0.name, $0.value) } + corsHeaders) { nva, count in
            if head.withBody {
                var provider = nghttp2_data_provider()
                provider.read_callback = HTTP2Connection.dataSourceRead
                _ = nghttp2_submit_response(session, id, nva, count, &provider)
            } else {
                _ = nghttp2_submit_response(session, id, nva, count, nil)
            }
        }
        connection.scheduleFlush()
    }

    /// nghttp2's data source read callback for this stream: fills `buffer`, defers while the
    /// handler has nothing queued, and sends trailers once it is done.
    func readBody(into buffer: UnsafeMutableRawBufferPointer, flags: UnsafeMutablePointer<UInt32>) -> Int {
        if machine.state == .respondingPlain {
            let (count, end) = machine.readPlainBody(into: buffer)
            if end { flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue }
            return count
        }
        guard let outbound else { return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
        let drained = outbound.drain(into: buffer)
        guard drained.endOfStream else {
            return drained.byteCount == 0 ? Int(NGHTTP2_ERR_DEFERRED.rawValue) : drained.byteCount
        }
        switch machine.bodyEnd(status: drained.status) {
        case .reset:
            // Deliver what was queued, then reset instead of ending cleanly.
            return drained.byteCount > 0 ? drained.byteCount : Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
        case .endStream:
            flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue
        case .trailers(let fields):
            flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue
            if let session = connection.session {
                flags.pointee |= NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
                withNameValues(fields.map { ($0.name, $0.value) }) { nva, count in
                    _ = nghttp2_submit_trailer(session, id, nva, count)
                }
            }
        }
        return drained.byteCount
    }
}
