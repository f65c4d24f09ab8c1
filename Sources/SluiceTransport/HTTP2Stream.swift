import SluiceIO
import CNGHTTP2
import SluiceWire

/// One request stream: collects the request, validates it, runs the handler and feeds the
/// response to nghttp2. Loop-confined, like its connection.
final class HTTP2Stream {
    let id: Int32
    unowned let connection: HTTP2Connection

    private var method: String?
    private(set) var path: String?
    private var contentType: String?
    private var headers: [(name: String, value: String)] = []
    private var headerBytes = 0

    private var rpcProtocol: RPCProtocol = .grpc
    private var handler: RPCHandler?
    /// Set for plain HTTP routes; the request body is collected whole into `requestBody`.
    private var httpHandler: HTTPHandler?
    private var requestBody: [UInt8] = []
    private var decoder: EnvelopeDecoder
    private var requestMessage: [UInt8]?
    private var deadline: ContinuousClock.Instant?
    private var deadlineTimer: TimerID?
    private var handlerTask: Task<Void, Never>?

    /// The client has sent END_STREAM.
    private(set) var requestComplete = false
    /// The response is decided (an error, or the handler is running): ignore further request bytes.
    private var requestHandled = false
    private(set) var outbound: StreamOutbound?
    private(set) var responseSubmitted = false
    /// A plain HTTP response body (405, 415), served instead of RPC messages.
    private var plainBody: [UInt8]?
    private var plainBodyIndex = 0

    init(id: Int32, connection: HTTP2Connection) {
        self.id = id
        self.connection = connection
        self.decoder = EnvelopeDecoder(maxMessageSize: connection.server.configuration.limits.maxMessageSize)
    }

    // MARK: Request

    /// Returns false when the header list exceeds the limit (the stream is then reset).
    func addHeader(name: String, value: String) -> Bool {
        // RFC 7541 §4.1 size accounting, the same the client sees in SETTINGS_MAX_HEADER_LIST_SIZE.
        headerBytes += name.utf8.count + value.utf8.count + 32
        guard headerBytes <= connection.server.configuration.limits.maxHeaderListSize else { return false }
        switch name {
        case ":method": method = value
        case ":path": path = value
        case "content-type":
            contentType = value
            headers.append((name, value))
        default: if !name.hasPrefix(":") { headers.append((name, value)) }
        }
        return true
    }

    func headersComplete() {
        let target = (path ?? "").split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        if let route = target.first, let httpHandler = connection.server.router.httpHandler(for: String(route)) {
            self.httpHandler = httpHandler
            outbound = makeOutbound(framing: .raw, endStreamEnvelope: nil)
            return
        }
        guard method == "POST" else {
            respondPlain(status: 405, extraHeaders: [("allow", "POST")], body: "\(method ?? "this method") is not allowed: RPCs use POST.\n")
            return
        }
        let type = contentType ?? ""
        if type.hasPrefix("application/grpc") {
            rpcProtocol = .grpc
        } else if type == "application/connect+json" || type.hasPrefix("application/connect+json;") {
            rpcProtocol = .connect
        } else {
            respondPlain(
                status: 415, extraHeaders: [("accept-post", "application/grpc, application/grpc+json, application/connect+json")],
                body: "Unsupported content-type '\(type)': send application/grpc, application/grpc+json or application/connect+json.\n"
            )
            return
        }
        var connectEnvelope: (@Sendable (StatusCode, String) -> [UInt8])?
        if rpcProtocol == .connect {
            connectEnvelope = { code, message in
                EnvelopeEncoder.encode(ConnectEndStream.body(status: code, message: message), flags: .endStream)
            }
        }
        outbound = makeOutbound(framing: .envelope, endStreamEnvelope: connectEnvelope)

        let encodingHeader = rpcProtocol == .grpc ? "grpc-encoding" : "connect-content-encoding"
        if let encoding = header(encodingHeader), encoding != "identity" {
            fail(.unimplemented, "\(encodingHeader) '\(encoding)' is not supported: this server accepts identity only (send messages uncompressed)")
            return
        }
        guard let path, let route = connection.server.router.handler(for: path) else {
            fail(.unimplemented, "unknown method \(path ?? "(no :path)"): this server has no such RPC")
            return
        }
        self.handler = route.handler
        if !startDeadline(backstop: route.enforcesDeadline ? RPCRouter.deadlineBackstop : .zero) { return }
    }

    private func makeOutbound(
        framing: StreamOutbound.Framing, endStreamEnvelope: (@Sendable (StatusCode, String) -> [UInt8])?
    ) -> StreamOutbound {
        let box = LoopBound(connection, loop: connection.loop)
        let streamID = id
        return StreamOutbound(
            capacity: connection.server.configuration.limits.streamQueueBytes,
            framing: framing,
            endStreamEnvelope: endStreamEnvelope,
            messageDelivered: connection.server.configuration.messageDelivered
        ) { [loop = connection.loop] in
            loop.execute { box.value.streamHasOutput(streamID) }
        }
    }

    private func startDeadline(backstop: Duration) -> Bool {
        let name = rpcProtocol == .grpc ? "grpc-timeout" : "connect-timeout-ms"
        guard let value = header(name) else { return true }
        let timeout = rpcProtocol == .grpc ? Timeouts.parseGRPCTimeout(value) : Timeouts.parseConnectTimeout(value)
        guard let timeout else {
            fail(.invalidArgument, "malformed \(name) header '\(value)'")
            return false
        }
        deadline = .now + timeout
        deadlineTimer = connection.loop.scheduleTimer(after: timeout + backstop) { [weak self] in
            self?.deadlineTimer = nil
            self?.end(.deadlineExceeded, "deadline exceeded: the call ran longer than its \(name) of \(value)")
        }
        return true
    }

    func receiveData(_ bytes: UnsafeRawBufferPointer) {
        guard !requestHandled else { return }
        if httpHandler != nil {
            let limit = connection.server.configuration.limits.maxMessageSize
            guard requestBody.count + bytes.count <= limit else {
                respondPlain(status: 413, extraHeaders: [], body: "The request body exceeds the limit of \(limit) bytes.\n")
                return
            }
            requestBody.append(contentsOf: bytes)
            return
        }
        decoder.append(bytes)
        do {
            while let envelope = try decoder.next() {
                guard requestMessage == nil else {
                    fail(.invalidArgument, "this method takes exactly one request message, but the client sent more")
                    return
                }
                requestMessage = envelope.payload
            }
        } catch {
            fail(error.code, error.message)
        }
    }

    func endOfRequest() {
        requestComplete = true
        guard !requestHandled else { return }
        if let httpHandler {
            runHTTPHandler(httpHandler)
            return
        }
        if let description = decoder.partialMessageDescription {
            fail(.invalidArgument, description)
            return
        }
        guard let message = requestMessage, let handler, let outbound, let path else {
            fail(.invalidArgument, "this method takes exactly one request message, but the client sent none")
            return
        }
        requestHandled = true
        let server = connection.server
        let workLoop = server.placeCall(preferring: connection.loop)
        let request = RPCRequest(
            path: path, rpcProtocol: rpcProtocol, headers: headers, message: message, deadline: deadline,
            executor: workLoop
        )
        let writer = RPCResponseWriter(outbound: outbound)
        handlerTask = Task(executorPreference: connection.loop) {
            defer { server.callEnded(on: workLoop) }
            do {
                try await handler(request, writer)
                outbound.finish(.ok, "")
            } catch let error as RPCError {
                outbound.finish(error.code, error.message)
            } catch is CancellationError {
                outbound.finish(.cancelled, "the call was cancelled")
            } catch {
                outbound.finish(.internal, "internal error: \(error)")
            }
        }
    }

    private func runHTTPHandler(_ handler: @escaping HTTPHandler) {
        guard let outbound else { return }
        requestHandled = true
        let target = (path ?? "/").split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let request = HTTPRequest(
            method: method ?? "GET", path: String(target[0]), query: target.count > 1 ? String(target[1]) : nil,
            headers: headers, body: requestBody
        )
        requestBody = []
        handlerTask = outbound.runHTTPHandler(handler, request, on: connection.loop)
    }

    private func header(_ name: String) -> String? {
        headers.first { $0.name == name }?.value
    }

    // MARK: Ending

    /// Ends the call now (deadline, shutdown): queued messages are dropped, the handler is cancelled.
    func end(_ code: StatusCode, _ message: String) {
        requestHandled = true
        if let outbound, outbound.abort(code, message) {
            handlerTask?.cancel()
            streamHasOutput()
        }
    }

    private func fail(_ code: StatusCode, _ message: String) {
        requestHandled = true
        outbound?.finish(code, message)
        streamHasOutput()
    }

    /// The stream closed (completed, or reset by the client).
    func closed(errorCode: UInt32) {
        cancelDeadline()
        outbound?.close(RPCError(.cancelled, "the client cancelled the call (RST_STREAM \(errorCode))"), disconnect: .reset(errorCode: errorCode))
        handlerTask?.cancel()
    }

    func connectionClosed() {
        cancelDeadline()
        outbound?.close(RPCError(.cancelled, "the client's connection closed"), disconnect: .connectionLost)
        handlerTask?.cancel()
    }

    private func cancelDeadline() {
        if let deadlineTimer { connection.loop.cancelTimer(deadlineTimer) }
        deadlineTimer = nil
    }

    // MARK: Response

    private func respondPlain(status: Int, extraHeaders: [(String, String)], body: String) {
        requestHandled = true
        plainBody = Array(body.utf8)
        var headers = [(":status", String(status)), ("content-type", "text/plain; charset=utf-8")]
        headers += extraHeaders
        submitResponse(headers: headers, withBody: true)
    }

    /// Called on the loop whenever the handler queued bytes or the call ended.
    func streamHasOutput() {
        guard let session = connection.session else { return }
        if responseSubmitted {
            nghttp2_session_resume_data(session, id)
        } else if let outbound, let shape = outbound.responseShape(trailersOnlyAllowed: httpHandler == nil && rpcProtocol == .grpc) {
            if httpHandler != nil {
                submitResponse(headers: outbound.head ?? [(":status", "500")], withBody: true)
            } else if shape.trailersOnly, let status = shape.status {
                submitResponse(headers: [(":status", "200"), ("content-type", contentType ?? "application/grpc")] + statusHeaders(status), withBody: false)
            } else {
                submitResponse(headers: responseHeaders(), withBody: true)
            }
        }
        connection.scheduleFlush()
    }

    private func responseHeaders() -> [(String, String)] {
        switch rpcProtocol {
        case .grpc: [(":status", "200"), ("content-type", contentType ?? "application/grpc"), ("grpc-accept-encoding", "identity")]
        case .connect: [(":status", "200"), ("content-type", "application/connect+json"), ("connect-accept-encoding", "identity")]
        }
    }

    private func statusHeaders(_ status: (code: StatusCode, message: String)) -> [(String, String)] {
        var headers = [("grpc-status", String(status.code.rawValue))]
        if !status.message.isEmpty { headers.append(("grpc-message", GRPCMessageEncoding.encode(status.message))) }
        return headers
    }

    private func submitResponse(headers: [(String, String)], withBody: Bool) {
        guard let session = connection.session, !responseSubmitted else { return }
        responseSubmitted = true
        withNameValues(headers) { nva, count in
            if withBody {
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
        if let plainBody {
            let count = min(buffer.count, plainBody.count - plainBodyIndex)
            plainBody.withUnsafeBytes { source in
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[plainBodyIndex..<plainBodyIndex + count]))
            }
            plainBodyIndex += count
            if plainBodyIndex == plainBody.count { flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue }
            return count
        }
        guard let outbound else { return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
        let drained = outbound.drain(into: buffer)
        if httpHandler != nil, drained.endOfStream, let status = drained.status, status.code != .ok {
            // Deliver what was queued, then reset instead of ending cleanly.
            return drained.byteCount > 0 ? drained.byteCount : Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
        }
        if drained.endOfStream {
            flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue
            if httpHandler == nil, rpcProtocol == .grpc, let status = drained.status, let session = connection.session {
                flags.pointee |= NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
                withNameValues(statusHeaders(status)) { nva, count in
                    _ = nghttp2_submit_trailer(session, id, nva, count)
                }
            }
            return drained.byteCount
        }
        if drained.byteCount == 0 { return Int(NGHTTP2_ERR_DEFERRED.rawValue) }
        return drained.byteCount
    }
}
