import SluiceEngine
import SluiceIO
import SluiceTransport
import SluiceWire
import Synchronization

/// The event streams as Server-Sent Events, for browsers and shell tools that do not speak gRPC:
///
/// - `POST /v1/streams` with a SendMessage request as `application/json` starts a stream: 201 `{"stream_id"}`.
/// - `GET /v1/streams/{id}/events` reads it as `text/event-stream` (`id: seq`, `event: type`, `data: <the
///   RPC frame>`), after `Last-Event-ID` or `?after_seq=N`, through the same replay buffer as Resume.
/// - `DELETE /v1/streams/{id}` cancels it, like the Cancel RPC.
///
/// Callers and caller isolation are those of StreamingService. A started stream has no reader until a GET
/// attaches one, so one nobody reads is cancelled after `--abandon-grace`, like an abandoned RPC stream; a
/// reader that disconnects only detaches. Errors are `{"error": {"code": <gRPC status name>, "message"}}`.
public struct EventStreamService: Sendable {
    public static let collectionPath = "/v1/streams"

    let engine: StreamEngine
    let authentication: CallerAuthentication
    /// An event stream with nothing to send for this long gets a `: keepalive` comment, so proxies and
    /// clients with idle timeouts keep the connection.
    let heartbeat: Duration
    let isDraining: @Sendable () -> Bool

    public init(
        engine: StreamEngine, authentication: CallerAuthentication, heartbeat: Duration, isDraining: @escaping @Sendable () -> Bool
    ) {
        self.engine = engine
        self.authentication = authentication
        self.heartbeat = heartbeat
        self.isDraining = isDraining
    }

    public func register(in router: inout RPCRouter) {
        router.registerHTTP(Self.collectionPath) { request, writer in
            StreamRoute.sse.countRequest()
            return try await Self.respond(writer) { try await create(request) }
        }
        router.registerHTTP(prefix: Self.collectionPath + "/") { request, writer in
            StreamRoute.sse.countRequest()
            return try await Self.respond(writer) {
                let rest = request.path.dropFirst(Self.collectionPath.count + 1).split(separator: "/", omittingEmptySubsequences: false)
                if rest.count == 1, !rest[0].isEmpty {
                    return try await cancel(String(rest[0]), request)
                } else if rest.count == 2, !rest[0].isEmpty, rest[1] == "events" {
                    try await events(String(rest[0]), request, writer)
                    return nil
                } else {
                    throw Failure(
                        404, .notFound,
                        "no resource at \(request.path): streams are \(Self.collectionPath)/{stream_id}/events (GET) and \(Self.collectionPath)/{stream_id} (DELETE)"
                    )
                }
            }
        }
    }

    // MARK: Routes

    private func create(_ request: HTTPRequest) async throws -> JSONResponse {
        try Self.requireMethod("POST", request)
        let caller = try authentication.caller(authorization: request.header("authorization"))
        if isDraining() {
            throw Failure(503, .unavailable, "the server is shutting down and starts no new streams: retry against another instance")
        }
        // Requiring JSON also makes a cross-site form post (a "simple" request a web page can send to a
        // loopback server without caller keys) fail instead of starting a stream.
        let type = request.header("content-type") ?? ""
        guard type == "application/json" || type.hasPrefix("application/json;") else {
            throw Failure(
                415, .invalidArgument, "the request body must be a SendMessage request with content-type application/json, not '\(type)'")
        }
        let parsed = try SendMessageRequest(json: request.body)
        // On the connection's loop, like an RPC stream's job: its retry backoff and deadlines are then loop timers.
        let trace = StreamTrace(traceparent: request.header("traceparent"), tracestate: request.header("tracestate"))
        let channel = try await engine.startAnywhere(
            parsed, caller: caller, deadline: nil, executor: EventLoop.current, trace: trace, route: .sse)
        return JSONResponse(
            status: 201, body: ["stream_id": .string(channel.streamID)],
            headers: [("location", "\(Self.collectionPath)/\(channel.streamID)/events")]
        )
    }

    private func cancel(_ streamID: String, _ request: HTTPRequest) async throws -> JSONResponse {
        try Self.requireMethod("DELETE", request)
        let caller = try authentication.caller(authorization: request.header("authorization"))
        try await engine.cancelAnywhere(
            streamID, caller: caller, reason: "the stream was cancelled by DELETE \(Self.collectionPath)/\(streamID)")
        return JSONResponse(status: 200, body: ["stream_id": .string(streamID), "cancelled": true])
    }

    /// Writes its own response; throws only before it starts one.
    private func events(_ streamID: String, _ request: HTTPRequest, _ writer: HTTPResponseWriter) async throws {
        try Self.requireMethod("GET", request)
        let caller = try authentication.caller(authorization: request.header("authorization"))
        let after = try Self.resumePoint(request)
        let channel = try await engine.resumableChannel(streamID, caller: caller, after: after, route: .sse)
        // A newer reader replaces an older one, as with Resume; leaving only detaches.
        let sink = EventSink(writer: writer)
        let generation = channel.attach(sink: sink, after: after)
        defer { channel.detach(generation) }
        // Decided before the head, while these can still be answered as errors (DATA_LOSS is thrown here).
        if case .ready(.end) = try channel.poll(after: after, generation: generation) {
            // Nothing after the client's last event: 204 tells an EventSource to stop reconnecting.
            try writer.head(status: 204)
            return
        }
        try writer.head(
            status: 200,
            headers: [
                ("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"),
                ("x-content-type-options", "nosniff"),
                // Reverse proxies such as nginx would otherwise buffer the stream.
                ("x-accel-buffering", "no"),
            ]
        )
        try await stream(channel, after: after, generation: generation, to: writer, sink: sink)
    }

    // MARK: Event stream

    /// Writes the channel's events after `cursor` until the stream ends, the client leaves (a write fails,
    /// the task is cancelled) or a newer reader takes over. Only HTTPStreamReset escapes. While the client keeps
    /// up, the job pushes events through `sink` and this task only waits; it writes what the sink refused.
    private func stream(
        _ channel: StreamChannel, after start: Int, generation: Int, to writer: HTTPResponseWriter, sink: EventSink
    ) async throws {
        var cursor = start
        do {
            while true {
                sink.pushedSinceLastLook.store(false, ordering: .relaxed)
                switch try await channel.next(after: cursor, generation: generation, until: .now + heartbeat) {
                case .item(.event(let seq, let type, let frame, let emittedAt)):
                    try await writer.write(Self.encode(seq: seq, type: type, frame: frame), since: emittedAt)
                    cursor = seq
                case .item(.end):
                    return  // after stream_complete or stream_error
                case .timedOut:
                    // Quiet only if the sink pushed nothing meanwhile.
                    if sink.pushedSinceLastLook.load(ordering: .relaxed) { continue }
                    try await writer.write(SSEEncoder.comment("keepalive"))
                case .detached:
                    if !Task.isCancelled {
                        try await writer.write(SSEEncoder.comment("a newer reader of stream \(channel.streamID) took over"))
                    }
                    return
                }
            }
        } catch let error as RPCError where error.code == .dataLoss {
            // The reader fell behind the replay buffer. The head is out, so reset; a reconnect with
            // Last-Event-ID then gets the error as JSON.
            throw HTTPStreamReset()
        } catch {
            return  // a failed write: the client left
        }
    }

    /// `event: type`, `id: seq`, `data: <the frame's JSON>`, as `SSEEncoder` writes them. A frame is one line
    /// (JSON escapes line breaks) of UTF-8 (Sluice's own JSON, from Swift strings), so it is copied as it is, once
    /// per event of every reader, instead of going through a string and the encoder's line splitting; anything
    /// else (no frame Sluice writes) takes the encoder's path.
    static func encode(seq: Int, type: String, frame: [UInt8]) -> [UInt8] {
        func isLineBreak(_ byte: UInt8) -> Bool { byte == 0x0A || byte == 0x0D }
        guard !frame.isEmpty, !type.isEmpty, !frame.contains(where: isLineBreak), !type.utf8.contains(where: isLineBreak) else {
            return SSEEncoder.encode(event: type, data: String(decoding: frame, as: UTF8.self), id: String(seq))
        }
        let id = String(seq)
        var out: [UInt8] = []
        out.reserveCapacity(frame.count + type.utf8.count + id.utf8.count + 20)
        out.append(contentsOf: "event: ".utf8)
        out.append(contentsOf: type.utf8)
        out.append(contentsOf: "\nid: ".utf8)
        out.append(contentsOf: id.utf8)
        out.append(contentsOf: "\ndata: ".utf8)
        out.append(contentsOf: frame)
        out.append(contentsOf: "\n\n".utf8)
        return out
    }

    /// Where a reader resumes: after `Last-Event-ID` (what an EventSource sends when it reconnects,
    /// so it wins), else after `?after_seq=N`, else from the start.
    static func resumePoint(_ request: HTTPRequest) throws(Failure) -> Int {
        if let lastEventID = request.header("last-event-id"), !lastEventID.isEmpty {
            guard let seq = Int(lastEventID), seq >= 0 else {
                throw Failure(
                    400, .invalidArgument,
                    "Last-Event-ID must be the id (seq) of the last event received, an integer of 0 or more, not '\(lastEventID)'")
            }
            return seq
        }
        for parameter in (request.query ?? "").split(separator: "&") {
            let pair = parameter.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard pair[0] == "after_seq" else { continue }
            guard pair.count == 2, let seq = Int(pair[1]), seq >= 0 else {
                throw Failure(400, .invalidArgument, "after_seq must be the seq of the last event received, an integer of 0 or more")
            }
            return seq
        }
        return 0
    }

    // MARK: Responses

    struct JSONResponse {
        var status: Int
        var body: JSONValue
        var headers: [(String, String)] = []
    }

    /// A request that ends with a JSON error instead of its normal response.
    struct Failure: Error {
        var status: Int
        var error: RPCError
        var headers: [(String, String)] = []

        init(_ status: Int, _ code: StatusCode, _ message: String, headers: [(String, String)] = []) {
            self.status = status
            self.error = RPCError(code, message)
            self.headers = headers
        }

        init(_ error: RPCError) {
            // Evicted events are gone for good, which 410 says better than the 500 of Connect's mapping.
            self.status = error.code == .dataLoss ? 410 : error.code.connectHTTPStatus
            self.error = error
        }

        var response: JSONResponse {
            JSONResponse(
                status: status, body: ["error": ["code": .string(error.code.name), "message": .string(error.message)]], headers: headers
            )
        }
    }

    private static func requireMethod(_ method: String, _ request: HTTPRequest) throws(Failure) {
        guard request.method == method else {
            throw Failure(
                405, .unimplemented, "\(request.method) is not allowed on \(request.path): use \(method)", headers: [("allow", method)])
        }
    }

    /// Sends the JSON response `route` returns, or the error it throws (a `Failure`, or an `RPCError`
    /// mapped to its HTTP status); a route that answered itself returns nil.
    private static func respond(_ writer: HTTPResponseWriter, _ route: () async throws -> JSONResponse?) async throws {
        let response: JSONResponse?
        do {
            response = try await route()
        } catch let failure as Failure {
            response = failure.response
        } catch let error as RPCError {
            response = Failure(error).response
        }
        guard let response else { return }
        let headers = [("content-type", "application/json"), ("cache-control", "no-store"), ("x-content-type-options", "nosniff")]
        try writer.head(status: response.status, headers: headers + response.headers)
        try await writer.write(response.body.serialized() + [0x0A])
    }
}

/// Lets the job write an SSE reader's events straight into its response while the client keeps up: no task switch
/// (and no heartbeat timer re-armed) per event.
private final class EventSink: StreamEventSink {
    let writer: HTTPResponseWriter
    /// Set by each push: the reader's task sends a keepalive only when nothing went out for a whole heartbeat.
    let pushedSinceLastLook = Atomic<Bool>(false)

    init(writer: HTTPResponseWriter) {
        self.writer = writer
    }

    func offer(_ bytes: [UInt8], seq: Int, type: String, emittedAt: ContinuousClock.Instant) -> Bool {
        guard writer.tryWrite(EventStreamService.encode(seq: seq, type: type, frame: bytes), since: emittedAt) else { return false }
        pushedSinceLastLook.store(true, ordering: .relaxed)
        return true
    }
}
