import Metrics
import SluiceEngine
import SluiceIO
import SluiceTransport
import SluiceUpstream
import SluiceWire

/// The Anthropic Messages API's own front door, `POST /v1/messages`, so an existing SDK user gets Sluice by
/// changing its base URL. The request runs as a Sluice stream (admission, queueing, retries, deadlines); the
/// answer is the API's SSE or JSON, built by `MessagesAPITranslator`; errors are the API's
/// (`MessagesAPIError`). There is no Resume here (the API has none): a client that leaves cancels the stream.
public struct MessagesService: Sendable {
    public static let path = "/v1/messages"
    public static let countTokensPath = "/v1/messages/count_tokens"

    let engine: StreamEngine
    let authentication: CallerAuthentication
    /// A streaming response waiting in the queue, or for its first token, gets a `ping` this often.
    let pingInterval: Duration
    let isDraining: @Sendable () -> Bool
    /// Sluice's server tools a request may name here (`--messages-server-tools`); none by default, as the API's
    /// format has no place for them unless the operator chooses to offer them.
    let serverTools: Set<String>

    public init(
        engine: StreamEngine, authentication: CallerAuthentication, pingInterval: Duration, serverTools: Set<String> = [],
        isDraining: @escaping @Sendable () -> Bool
    ) {
        self.engine = engine
        self.authentication = authentication
        self.pingInterval = pingInterval
        self.serverTools = serverTools
        self.isDraining = isDraining
    }

    public func register(in router: inout RPCRouter) {
        router.registerHTTP(Self.path, bodyTooLarge: Self.requestTooLarge) { request, writer in
            StreamRoute.messages.countRequest()
            do {
                try await messages(request, writer)
            } catch let error as MessagesAPIError {
                try await Self.respond(error, writer)
            }
        }
        router.registerHTTP(Self.countTokensPath, bodyTooLarge: Self.requestTooLarge) { request, writer in
            StreamRoute.messages.countRequest()
            do {
                try await countTokens(request, writer)
            } catch let error as MessagesAPIError {
                try await Self.respond(error, writer)
            }
        }
    }

    /// A body over `--max-message-size` is refused by the transport before a handler runs: in the API's shape, 413
    /// `request_too_large`, as the API answers one (the SDKs raise `RequestTooLargeError`).
    static let requestTooLarge: RPCRouter.BodyTooLargeResponse = { message in
        StreamRoute.messages.countRequest()
        let error = MessagesAPIError(status: 413, type: "request_too_large", message: message)
        Counter(label: "sluice_messages_errors_total", dimensions: [("type", error.type)]).increment()
        return HTTPFixedResponse(status: error.status, headers: error.headers, body: error.body.serializedString + "\n")
    }

    private static func respond(_ error: MessagesAPIError, _ writer: HTTPResponseWriter) async throws {
        Counter(label: "sluice_messages_errors_total", dimensions: [("type", error.type)]).increment()
        try writer.head(status: error.status, headers: error.headers)
        try await writer.write(error.body.serialized() + [0x0A])
    }

    /// Forwarded as is, outside admission (no generation, nothing to queue): the upstream validates the body and
    /// its answer, success or the API's error, is the caller's. Only Sluice's failure to get one is Sluice's error.
    private func countTokens(_ request: HTTPRequest, _ writer: HTTPResponseWriter) async throws {
        guard request.method == "POST" else {
            throw MessagesAPIError(
                status: 405, type: "invalid_request_error", message: "\(request.method) is not allowed on \(Self.countTokensPath): use POST"
            )
        }
        _ = try Self.caller(request, authentication)
        let body = try countTokensBody(request.body)
        let response: UpstreamResponse
        do {
            response = try await engine.upstream.post(path: Self.countTokensPath, body: body, headers: Self.forwardedHeaders(request))
        } catch {
            throw MessagesAPIError(RPCError(error.grpcStatus, "the Anthropic API gave no answer to count_tokens: \(error.message)"))
        }
        // The API's request id and retry advice stay with its answer.
        let headers =
            [("content-type", response.header("content-type") ?? "application/json")]
            + ["request-id", "retry-after"].compactMap { name in response.header(name).map { (name, $0) } }
        try writer.head(status: response.status, headers: headers)
        try await writer.write(response.body)
    }

    /// The body as the upstream counts it: Sluice's server tools named in `tools` become the definitions the model
    /// gets, and their blocks in the history the turns it had, as for a message. Anything else (a body that is not
    /// JSON included) is the upstream's to judge.
    private func countTokensBody(_ body: [UInt8]) throws(MessagesAPIError) -> [UInt8] {
        guard case .object(var fields)? = try? JSONValue(parsing: body) else { return body }
        var changed = false
        if let tools = fields["tools"]?.arrayValue, tools.contains(where: { $0.stringValue != nil }) {
            try Self.checkServerTools(tools, offered: serverTools)
            fields["tools"] = .array(tools.flatMap { tool in tool.stringValue.map { engine.toolDefinitions([$0]) } ?? [tool] })
            changed = true
        }
        if let messages = fields["messages"]?.arrayValue, let upstream = ServerToolHistory.upstreamMessages(messages) {
            fields["messages"] = .array(upstream)
            changed = true
        }
        return changed ? JSONValue.object(fields).serialized() : body
    }

    /// The API version and betas the SDK asked for; its key is the caller's Sluice key and stays here.
    static func forwardedHeaders(_ request: HTTPRequest) -> [(String, String)] {
        ["anthropic-version", "anthropic-beta"].compactMap { name in request.header(name).map { (name, $0) } }
    }

    /// Answers itself once the stream has started; throws `MessagesAPIError` only before its response head.
    private func messages(_ request: HTTPRequest, _ writer: HTTPResponseWriter) async throws {
        guard request.method == "POST" else {
            throw MessagesAPIError(
                status: 405, type: "invalid_request_error", message: "\(request.method) is not allowed on \(Self.path): use POST")
        }
        let caller = try Self.caller(request, authentication)
        if isDraining() {
            throw MessagesAPIError(
                status: 529, type: "overloaded_error", message: "this server is shutting down and starts no new requests: retry")
        }
        var (parsed, streaming) = try Self.parse(request.body, serverTools: serverTools)
        parsed.upstreamHeaders = Self.forwardedHeaders(request)
        let channel: StreamChannel
        do {
            // On the connection's loop, like an RPC stream's job: its retry backoff and deadlines are loop timers.
            // `startAnywhere`: with a shared store, the caller's limit is the cluster's.
            let trace = StreamTrace(traceparent: request.header("traceparent"), tracestate: request.header("tracestate"))
            // Its client has no Resume: a drain lets the stream run out here rather than hand it off (`route`).
            channel = try await engine.startAnywhere(
                parsed, caller: caller, deadline: nil, executor: EventLoop.current, trace: trace, route: .messages)
        } catch {
            throw MessagesAPIError(error)
        }
        var finished = false
        // No Resume on this route: a client that leaves (a failed write, a reset) ends its upstream at once.
        defer {
            if !finished { try? engine.cancel(channel.streamID, caller: caller, reason: "the client of \(Self.path) disconnected") }
        }
        let generation = channel.attach()
        defer { channel.detach(generation) }
        var translator = MessagesAPITranslator(model: parsed.model)
        var response = StreamingResponse(writer: writer)
        var cursor = 0
        while !Task.isCancelled {
            let step: MessagesAPITranslator.Step
            switch try await channel.next(after: cursor, generation: generation, until: .now + pingInterval) {
            case .item(.event(let seq, let type, let frame, _)):
                cursor = seq
                step = translator.translate(type: type, frame: (try? JSONValue(parsing: frame)) ?? [:])
                if type == "message_restart", step.outcome == nil {
                    Counter(label: "sluice_messages_restarts_total", dimensions: [("visible", "false")]).increment()
                }
            case .item(.end(let error)):
                step = translator.translate(
                    type: "stream_error",
                    frame: [
                        "error": .string(error?.message ?? "the stream ended without a result"),
                        "details": ["code": .string((error?.code ?? .internal).name)],
                    ])
            case .timedOut:
                if streaming { try await response.send([MessagesAPITranslator.ping], commit: true) }
                continue
            case .detached:
                return
            }
            if case .restartedAfterContent = step.outcome {
                Counter(label: "sluice_messages_restarts_total", dimensions: [("visible", "true")]).increment()
            }
            if streaming {
                switch step.outcome {
                case .failed(let error)? where !response.headSent:
                    finished = true
                    throw error  // nothing but message_start was ready: an HTTP error is clearer to every client
                default:
                    // message_start alone waits, so an early failure can still be an HTTP status.
                    let commit = step.outcome != nil || step.events.contains { $0.name != "message_start" }
                    try await response.send(step.events, commit: commit)
                }
            }
            switch step.outcome {
            case nil:
                continue
            case .message(let message)?:
                finished = true
                if !streaming {
                    try writer.head(status: 200, headers: [("content-type", "application/json")])
                    try await writer.write(message.serialized() + [0x0A])
                }
                return
            case .failed(let error)?, .restartedAfterContent(let error)?:
                finished = true
                if !streaming { throw error }
                return
            }
        }
    }

    /// The caller's Sluice key: the SDKs send it as `x-api-key`; `authorization: Bearer` works too.
    static func caller(_ request: HTTPRequest, _ authentication: CallerAuthentication) throws(MessagesAPIError) -> String {
        let authorization = request.header("x-api-key").map { "Bearer \($0)" } ?? request.header("authorization")
        do {
            return try authentication.caller(authorization: authorization)
        } catch {
            throw MessagesAPIError(
                status: 401, type: "authentication_error",
                message: authorization == nil
                    ? "missing credentials: send your Sluice caller key as 'x-api-key' (the SDKs' api_key) or 'authorization: Bearer'"
                    : "the caller key is not valid for this server")
        }
    }

    /// Sluice's server tools (strings in `tools`) must be among those `--messages-server-tools` offers.
    static func checkServerTools(_ tools: [JSONValue], offered serverTools: Set<String>) throws(MessagesAPIError) {
        for (index, tool) in tools.enumerated() {
            guard let name = tool.stringValue, !serverTools.contains(name) else { continue }
            let offered = serverTools.isEmpty ? "none are" : "only \(serverTools.sorted().joined(separator: ", ")) are"
            throw MessagesAPIError(
                status: 400, type: "invalid_request_error",
                message:
                    "tools.\(index): Sluice's server tool '\(name)' is not offered on \(path) (\(offered)); a tool the API runs or your code runs is an object (a tool definition). To offer it, start sluice with --messages-server-tools \(name) (and --tool-root)"
            )
        }
    }

    /// The Messages API body as a Sluice request, and whether it asked for a stream. Sluice's own server
    /// tools are named as in SendMessage (strings in `tools`), and only those in `serverTools` are allowed.
    static func parse(_ body: [UInt8], serverTools: Set<String>) throws(MessagesAPIError) -> (SendMessageRequest, streaming: Bool) {
        let root: JSONValue
        do {
            root = try JSONValue(parsing: body)
        } catch {
            throw MessagesAPIError(status: 400, type: "invalid_request_error", message: "the request body is not valid JSON: \(error)")
        }
        try checkServerTools(root["tools"]?.arrayValue ?? [], offered: serverTools)
        var request: SendMessageRequest
        do {
            if let messages = root["messages"]?.arrayValue, let upstream = ServerToolHistory.upstreamMessages(messages),
                case .object(var fields) = root
            {
                fields["messages"] = .array(upstream)
                request = try SendMessageRequest(json: JSONValue.object(fields).serialized())
            } else {
                request = try SendMessageRequest(json: body)
            }
        } catch {
            throw MessagesAPIError(error)
        }
        let streaming = root["stream"]?.boolValue ?? false
        // The non-streaming answer is the final turn's message, assembled by the engine.
        request.includeMessage = !streaming
        return (request, streaming)
    }
}

/// The head of a streaming response goes out with the first event worth committing to a 200 for.
private struct StreamingResponse {
    let writer: HTTPResponseWriter
    private(set) var headSent = false
    private var pending: [UInt8] = []

    init(writer: HTTPResponseWriter) {
        self.writer = writer
    }

    mutating func send(_ events: [MessagesAPITranslator.Event], commit: Bool) async throws {
        for event in events { pending += event.encoded }
        guard commit, !pending.isEmpty else { return }
        if !headSent {
            headSent = true
            try writer.head(
                status: 200,
                headers: [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"), ("x-accel-buffering", "no")])
        }
        let bytes = pending
        pending = []
        try await writer.write(bytes)
    }
}
