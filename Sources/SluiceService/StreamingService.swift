import SluiceEngine
import SluiceTransport
import SluiceWire

/// `sluice.v1.StreamingService`: SendMessage, Resume and Cancel.
public struct StreamingService: Sendable {
    public static let sendMessagePath = "/sluice.v1.StreamingService/SendMessage"
    public static let resumePath = "/sluice.v1.StreamingService/Resume"
    public static let cancelPath = "/sluice.v1.StreamingService/Cancel"

    let engine: StreamEngine
    let authentication: CallerAuthentication

    public init(engine: StreamEngine, authentication: CallerAuthentication) {
        self.engine = engine
        self.authentication = authentication
    }

    public func register(in router: inout RPCRouter) {
        // The engine ends these streams at the deadline itself, with a stream_error event last.
        router.register(Self.sendMessagePath, enforcesDeadline: true) { request, writer in
            StreamRoute.rpc.countRequest()
            let caller = try authentication.caller(authorization: request.header("authorization"))
            let parsed = try SendMessageRequest(json: request.message)
            let trace = StreamTrace(traceparent: request.header("traceparent"), tracestate: request.header("tracestate"))
            let channel = try await engine.startAnywhere(
                parsed, caller: caller, deadline: request.deadline, executor: request.executor, trace: trace, route: .rpc)
            try await deliver(channel, after: 0, to: writer, caller: caller)
        }
        router.register(Self.resumePath) { request, writer in
            StreamRoute.rpc.countRequest()
            let caller = try authentication.caller(authorization: request.header("authorization"))
            let body = try JSONValue.requestObject(request.message)
            guard let streamID = body["stream_id"]?.stringValue else {
                throw RPCError(.invalidArgument, "Resume needs 'stream_id' (a string)")
            }
            let afterSeq = body["after_seq"]?.intValue ?? 0
            guard afterSeq >= 0 else { throw RPCError(.invalidArgument, "'after_seq' must be 0 or more") }
            let channel = try await engine.resumableChannel(streamID, caller: caller, after: afterSeq, route: .rpc)
            try await deliver(channel, after: afterSeq, to: writer, caller: caller)
        }
        router.register(Self.cancelPath) { request, writer in
            StreamRoute.rpc.countRequest()
            let caller = try authentication.caller(authorization: request.header("authorization"))
            let body = try JSONValue.requestObject(request.message)
            guard let streamID = body["stream_id"]?.stringValue else {
                throw RPCError(.invalidArgument, "Cancel needs 'stream_id' (a string)")
            }
            try await engine.cancelAnywhere(streamID, caller: caller, reason: "the stream was cancelled by a Cancel call")
            try await writer.write(JSONValue.object(["stream_id": .string(streamID), "cancelled": true]).serialized())
        }
    }

    /// Sends the channel's events after `seq` to this call until the stream ends. When the
    /// client leaves, a reset (explicit cancel) ends the stream; a lost connection only detaches
    /// it, and the engine keeps it for `--abandon-grace` awaiting a Resume.
    private func deliver(_ channel: StreamChannel, after seq: Int, to writer: RPCResponseWriter, caller: String) async throws {
        let generation = channel.attach(sink: WriterSink(writer: writer), after: seq)
        defer { channel.detach(generation) }
        var cursor = seq
        do {
            while true {
                guard let item = try await channel.next(after: cursor, generation: generation) else {
                    throw RPCError(.cancelled, "this call was replaced by a newer Resume of stream \(channel.streamID), or cancelled")
                }
                switch item {
                case .event(let eventSeq, _, let bytes, let emittedAt):
                    try await writer.write(bytes, since: emittedAt)
                    cursor = eventSeq
                case .end(let error):
                    if let error { throw error }
                    return
                }
            }
        } catch {
            if case .reset? = writer.disconnect {
                try? await engine.cancelAnywhere(channel.streamID, caller: caller, reason: "the client cancelled the call")
            }
            throw error
        }
    }
}

/// Lets the job queue events straight into the call's outbound queue while the client keeps up.
private struct WriterSink: StreamEventSink {
    let writer: RPCResponseWriter

    func offer(_ bytes: [UInt8], seq: Int, type: String, emittedAt: ContinuousClock.Instant) -> Bool {
        writer.tryWrite(bytes, since: emittedAt)
    }
}

extension JSONValue {
    /// Parses a small request object, or INVALID_ARGUMENT.
    static func requestObject(_ bytes: [UInt8]) throws(RPCError) -> JSONValue {
        let value: JSONValue
        do {
            value = try JSONValue(parsing: bytes)
        } catch {
            throw RPCError(.invalidArgument, "the request is not valid JSON: \(error)")
        }
        guard case .object = value else { throw RPCError(.invalidArgument, "the request must be a JSON object") }
        return value
    }
}
