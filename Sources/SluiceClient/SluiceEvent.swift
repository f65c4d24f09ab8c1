import SluiceWire

/// One event of a Sluice stream (schema/stream_event.schema.json), as SendMessage and Resume deliver it.
public struct SluiceEvent: Sendable, Equatable {
    /// The stream's id, `st_…`: what `SluiceClient.resume` and `cancel` take.
    public let streamID: String
    /// 1, 2, 3… without gaps within a stream.
    public let seq: Int
    public let kind: Kind
    /// The frame's JSON exactly as received.
    public let json: [UInt8]

    public enum Kind: Sendable, Equatable {
        /// The stream waits for a slot, at this 1-based queue position.
        case streamQueued(position: Int)
        case messageStart(id: String, role: String, model: String)
        /// More text of message `id`.
        case messageDelta(id: String, delta: String)
        case messageStop(id: String, stopReason: String?)
        /// More extended thinking of message `id`.
        case thinkingDelta(id: String, delta: String)
        /// A client tool call with its parsed input: run the tool, then send its `tool_result` in a new request.
        case toolCall(id: String, toolUseID: String, name: String, input: JSONValue)
        /// A citation of the text just received.
        case citation(id: String, citation: JSONValue)
        /// Drop the partial text of message `id`: it starts over.
        case messageRestart(id: String, reason: String)
        /// An upstream attempt failed and is retried after `delayMilliseconds`; `mode` is `transparent`,
        /// `continue` or `restart`.
        case upstreamRetry(attempt: Int, reason: String, delayMilliseconds: Int, mode: String)
        case toolStart(id: String, name: String, input: JSONValue)
        case toolProgress(id: String, message: String, percentage: Int?)
        case toolComplete(id: String, output: JSONValue)
        case toolError(id: String, error: String)
        /// The stream failed; the call ends with `code` (details.code).
        case streamError(error: String, code: StatusCode?, details: JSONValue?)
        /// The stream finished; usage sums every upstream attempt.
        case streamComplete(inputTokens: Int, outputTokens: Int)
        /// The server running the stream shut down and let go of it here; the call then ends UNAVAILABLE and the
        /// stream resumes after this seq, continued by another replica (nothing to do: the resume is automatic).
        case streamHandoff(reason: String)
        /// An event type this client does not know (a newer server): its whole JSON object.
        case other(type: String, fields: JSONValue)
    }

    /// stream_complete or stream_error: nothing follows.
    public var isLast: Bool {
        switch kind {
        case .streamComplete, .streamError: true
        default: false
        }
    }

    public var type: String {
        switch kind {
        case .streamQueued: "stream_queued"
        case .messageStart: "message_start"
        case .messageDelta: "message_delta"
        case .messageStop: "message_stop"
        case .thinkingDelta: "thinking_delta"
        case .toolCall: "tool_call"
        case .citation: "citation"
        case .messageRestart: "message_restart"
        case .upstreamRetry: "upstream_retry"
        case .toolStart: "tool_start"
        case .toolProgress: "tool_progress"
        case .toolComplete: "tool_complete"
        case .toolError: "tool_error"
        case .streamError: "stream_error"
        case .streamComplete: "stream_complete"
        case .streamHandoff: "stream_handoff"
        case .other(let type, _): type
        }
    }

    /// Decodes one response frame; a frame that breaks the schema is an INTERNAL error.
    public init(json bytes: [UInt8]) throws(RPCError) {
        let value: JSONValue
        do {
            value = try JSONValue(parsing: bytes)
        } catch {
            throw RPCError(.internal, "a stream event is not valid JSON (\(error))")
        }
        var fields = EventFields(value: value)
        streamID = try fields.string("stream_id")
        seq = try fields.int("seq")
        let type = try fields.string("type")
        switch type {
        case "stream_queued": kind = .streamQueued(position: try fields.int("position"))
        case "message_start":
            kind = .messageStart(id: try fields.string("id"), role: try fields.string("role"), model: try fields.string("model"))
        case "message_delta": kind = .messageDelta(id: try fields.string("id"), delta: try fields.string("delta"))
        case "message_stop": kind = .messageStop(id: try fields.string("id"), stopReason: value["stop_reason"]?.stringValue)
        case "thinking_delta": kind = .thinkingDelta(id: try fields.string("id"), delta: try fields.string("delta"))
        case "tool_call":
            kind = .toolCall(
                id: try fields.string("id"), toolUseID: try fields.string("tool_use_id"), name: try fields.string("name"),
                input: value["input"] ?? [:])
        case "citation": kind = .citation(id: try fields.string("id"), citation: value["citation"] ?? .null)
        case "message_restart": kind = .messageRestart(id: try fields.string("id"), reason: try fields.string("reason"))
        case "upstream_retry":
            kind = .upstreamRetry(
                attempt: try fields.int("attempt"), reason: try fields.string("reason"), delayMilliseconds: try fields.int("delay_ms"),
                mode: try fields.string("mode")
            )
        case "tool_start": kind = .toolStart(id: try fields.string("id"), name: try fields.string("name"), input: value["input"] ?? .null)
        case "tool_progress":
            kind = .toolProgress(
                id: try fields.string("id"), message: try fields.string("message"), percentage: value["percentage"]?.intValue)
        case "tool_complete": kind = .toolComplete(id: try fields.string("id"), output: value["output"] ?? .null)
        case "tool_error": kind = .toolError(id: try fields.string("id"), error: try fields.string("error"))
        case "stream_error":
            let details = value["details"]
            let code = details?["code"]?.stringValue.flatMap { name in StatusCode.allCases.first { $0.name == name } }
            kind = .streamError(error: try fields.string("error"), code: code, details: details)
        case "stream_complete":
            fields.object = value["usage"] ?? .null
            kind = .streamComplete(inputTokens: try fields.int("input_tokens"), outputTokens: try fields.int("output_tokens"))
        case "stream_handoff": kind = .streamHandoff(reason: try fields.string("reason"))
        default: kind = .other(type: type, fields: value)
        }
        json = bytes
    }
}

/// Reads required members, naming the one that is missing.
private struct EventFields {
    var object: JSONValue
    let description: String

    init(value: JSONValue) {
        object = value
        description = "\(value["type"]?.stringValue ?? "a") event (seq \(value["seq"]?.intValue.map(String.init) ?? "?"))"
    }

    func string(_ key: String) throws(RPCError) -> String {
        guard let value = object[key]?.stringValue else { throw missing(key, "a string") }
        return value
    }

    func int(_ key: String) throws(RPCError) -> Int {
        guard let value = object[key]?.intValue else { throw missing(key, "an integer") }
        return value
    }

    private func missing(_ key: String, _ kind: String) -> RPCError {
        RPCError(.internal, "the \(description) lacks '\(key)' (\(kind))")
    }
}
