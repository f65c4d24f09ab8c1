import SluiceIO
import SluiceWire

/// Connect unary (`application/json`, connectrpc.com/docs/protocol): the request body is the bare JSON
/// message, compressed with HTTP's own `content-encoding`; the response is the bare message (200) or a
/// JSON error `{"code":"not_found","message":"…"}` under the HTTP status Connect maps from the code. That
/// status is known only when the handler ends, so the response is buffered. Decisions here are pure; the
/// transports run `handler(_:…)` as a plain HTTP handler, over HTTP/1.1 and HTTP/2 alike.
enum ConnectUnary {
    /// A decoded request: the message, and what the response may use.
    struct Call: Equatable {
        var message: [UInt8]
        var responseEncoding: MessageEncoding
        var timeout: Duration?
    }

    /// A buffered response: status, headers and body, decided once the handler has ended.
    struct Response {
        var status: Int
        var headers: [(String, String)]
        var body: [UInt8]
    }

    static let encodingHeaders = EncodingNegotiation.Headers(encoding: "content-encoding", acceptEncoding: "accept-encoding")

    /// Whether a request is a Connect unary call (given that an RPC serves its path).
    static func isUnaryRequest(method: String?, contentType: String?) -> Bool {
        guard method == "POST", let contentType = contentType?.lowercased() else { return false }
        return contentType == "application/json" || contentType.hasPrefix("application/json;")
    }

    /// Decodes a request from its headers and whole body.
    static func decodeRequest(header: (String) -> String?, body: [UInt8], maxMessageSize: Int) -> Result<Call, RPCError> {
        if let version = header("connect-protocol-version"), version != "1" {
            return .failure(RPCError(.invalidArgument, "connect-protocol-version '\(version)' is not supported: send 1"))
        }
        let encodings: EncodingNegotiation
        do {
            encodings = try EncodingNegotiation.negotiate(
                encoding: header("content-encoding"), acceptEncoding: header("accept-encoding"), headers: encodingHeaders)
        } catch {
            return .failure(error)
        }
        var timeout: Duration?
        if let value = header("connect-timeout-ms") {
            guard let parsed = Timeouts.parseConnectTimeout(value) else {
                return .failure(RPCError(.invalidArgument, "malformed connect-timeout-ms header '\(value)': send up to 10 digits"))
            }
            timeout = parsed
        }
        var message = body
        if encodings.request == .gzip {
            do {
                message = try Gzip.decompress(body, limit: maxMessageSize)
            } catch {
                switch error {
                case .tooLarge(let limit):
                    return .failure(RPCError(.resourceExhausted, "the inflated request body exceeds the limit of \(limit) bytes"))
                case .malformed(let reason):
                    return .failure(RPCError(.invalidArgument, "the request body is labelled content-encoding gzip, but \(reason)"))
                }
            }
        }
        return .success(Call(message: message, responseEncoding: encodings.response, timeout: timeout))
    }

    /// The response for a handler that ended with `code` after writing `messages` (a unary method writes one).
    static func response(
        code: StatusCode, message: String, messages: [[UInt8]], encoding: MessageEncoding, compressMinBytes: Int
    ) -> Response {
        var code = code
        var message = message
        if code == .ok && messages.count != 1 {
            code = .internal
            message = "the unary method wrote \(messages.count) response messages instead of one"
        }
        var headers = [("content-type", "application/json"), ("accept-encoding", MessageEncoding.advertised)]
        let body: [UInt8]
        if code == .ok {
            body = messages[0]
        } else {
            var error: [String: JSONValue] = ["code": .string(code.connectCode)]
            if !message.isEmpty { error["message"] = .string(message) }
            body = JSONValue.object(error).serialized()
        }
        guard let compressed = encoding.compressed(body, minBytes: compressMinBytes) else {
            return Response(status: code.connectHTTPStatus, headers: headers, body: body)
        }
        headers.append(("content-encoding", encoding.rawValue))
        return Response(status: code.connectHTTPStatus, headers: headers, body: compressed)
    }

    /// The plain HTTP handler that serves `rpc` as a Connect unary call; without one, the call is UNIMPLEMENTED.
    static func handler(_ rpc: RPCHandler?, maxMessageSize: Int, compressMinBytes: Int) -> HTTPHandler {
        { request, writer in
            var code = StatusCode.ok
            var message = ""
            var messages: [[UInt8]] = []
            var encoding = MessageEncoding.identity
            switch decodeRequest(header: request.header, body: request.body, maxMessageSize: maxMessageSize) {
            case .failure(let error):
                (code, message) = (error.code, error.message)
            case .success(let call):
                guard let rpc else {
                    (code, message) = (.unimplemented, "unknown method \(request.path): this server has no such RPC")
                    break
                }
                encoding = call.responseEncoding
                (code, message, messages) = await run(rpc, call, request)
            }
            let response = response(
                code: code, message: message, messages: messages, encoding: encoding, compressMinBytes: compressMinBytes)
            try writer.head(status: response.status, headers: response.headers)
            try await writer.write(response.body)
        }
    }

    /// Runs the RPC handler into a buffer, ending it at its deadline; returns its status and messages.
    private static func run(_ rpc: @escaping RPCHandler, _ call: Call, _ request: HTTPRequest) async -> (StatusCode, String, [[UInt8]]) {
        // Nothing drains this queue while the handler runs, so it must never make the handler wait: a capacity
        // (1 TiB) no handler reaches, and small enough for the queue's own arithmetic on it.
        let buffer = StreamOutbound(capacity: 1 << 40, endStreamEnvelope: nil) {}
        let rpcRequest = RPCRequest(
            path: request.path, rpcProtocol: .connect, headers: request.headers, message: call.message,
            deadline: call.timeout.map { .now + $0 })
        var code = StatusCode.ok
        var message = ""
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await rpc(rpcRequest, RPCResponseWriter(outbound: buffer)) }
                if let timeout = call.timeout {
                    group.addTask {
                        try await EventLoop.sleep(for: timeout)  // a loop timer when the call runs on a loop
                        throw RPCError(.deadlineExceeded, "deadline exceeded: the call ran longer than its connect-timeout-ms")
                    }
                }
                try await group.next()
                group.cancelAll()
            }
        } catch let error as RPCError {
            (code, message) = (error.code, error.message)
        } catch is CancellationError {
            (code, message) = (.cancelled, "the call was cancelled")
        } catch {
            (code, message) = (.internal, "internal error: \(error)")
        }
        buffer.finish(code, message)
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let drained = chunk.withUnsafeMutableBytes { buffer.drain(into: $0) }
            bytes += chunk[..<drained.byteCount]
            if drained.byteCount == 0 { break }
        }
        var decoder = EnvelopeDecoder(maxMessageSize: .max)
        decoder.append(bytes)
        var messages: [[UInt8]] = []
        while let envelope = try? decoder.next() { messages.append(envelope.payload) }
        return (code, message, messages)
    }
}
