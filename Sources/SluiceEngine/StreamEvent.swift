import SluiceWire

/// One event of a Sluice stream, as sent to clients (one JSON object per frame).
/// `seq` and `stream_id` are added by the stream's channel when the event is recorded.
public enum StreamEvent: Sendable, Equatable {
    case streamQueued(position: Int)
    case messageStart(id: String, role: String, model: String)
    case messageDelta(id: String, delta: String)
    case messageStop(id: String, stopReason: String?, stopSequence: String?)
    /// Extended thinking as it streams.
    case thinkingDelta(id: String, delta: String)
    /// A thinking block ended; pass the block back verbatim (with this signature) in later turns.
    case thinkingSignature(id: String, signature: String)
    case redactedThinking(id: String, data: String)
    /// A fragment of a client tool call's input JSON (fragments split anywhere, even inside a string).
    case toolCallDelta(id: String, toolUseID: String, name: String, partialJSON: String)
    /// A client tool call, its input parsed: the caller runs the tool and sends the result in a new request.
    case toolCall(id: String, toolUseID: String, name: String, input: JSONValue)
    /// A content block Sluice does not model (server tool use, web search results, new types), whole.
    case contentBlock(id: String, index: Int, block: JSONValue)
    /// A citation of the text that precedes it.
    case citation(id: String, citation: JSONValue)
    case messageRestart(id: String, reason: String)
    case upstreamRetry(attempt: Int, reason: String, delayMilliseconds: Int, mode: RetryMode)
    case toolStart(id: String, name: String, input: JSONValue)
    case toolProgress(id: String, message: String, percentage: Int?)
    case toolComplete(id: String, output: JSONValue)
    case toolError(id: String, error: String)
    case streamError(error: String, details: JSONValue?)
    /// `message`: the final turn's assistant message, when the request asked for it (`include_message`).
    case streamComplete(usage: JSONValue, message: JSONValue?)
    /// This replica stopped the stream here without ending it (it is shutting down): the call ends UNAVAILABLE,
    /// and a Resume after this seq, on any replica, continues the stream from the shared log.
    case streamHandoff(reason: String)

    public var type: String {
        switch self {
        case .streamQueued: "stream_queued"
        case .messageStart: "message_start"
        case .messageDelta: "message_delta"
        case .messageStop: "message_stop"
        case .thinkingDelta: "thinking_delta"
        case .thinkingSignature: "thinking_signature"
        case .redactedThinking: "redacted_thinking"
        case .toolCallDelta: "tool_call_delta"
        case .toolCall: "tool_call"
        case .contentBlock: "content_block"
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
        }
    }

    /// The frame's members, with the `seq` and `stream_id` of its stream, in the order `JSONValue` sorts keys
    /// (the tests check it does).
    private func members(streamID: String, seq: Int) -> KeyValuePairs<String, JSONValue> {
        let seq = JSONValue.integer(seq)
        let streamID = JSONValue.string(streamID)
        let type = JSONValue.string(type)
        return switch self {
        case .streamQueued(let position):
            ["position": .integer(position), "seq": seq, "stream_id": streamID, "type": type]
        case .messageStart(let id, let role, let model):
            ["id": .string(id), "model": .string(model), "role": .string(role), "seq": seq, "stream_id": streamID, "type": type]
        case .messageDelta(let id, let delta):
            ["delta": .string(delta), "id": .string(id), "seq": seq, "stream_id": streamID, "type": type]
        case .messageStop(let id, let stopReason, let stopSequence):
            [
                "id": .string(id), "seq": seq, "stop_reason": stopReason.map(JSONValue.string) ?? .null,
                "stop_sequence": stopSequence.map(JSONValue.string) ?? .null, "stream_id": streamID, "type": type,
            ]
        case .thinkingDelta(let id, let delta):
            ["delta": .string(delta), "id": .string(id), "seq": seq, "stream_id": streamID, "type": type]
        case .thinkingSignature(let id, let signature):
            ["id": .string(id), "seq": seq, "signature": .string(signature), "stream_id": streamID, "type": type]
        case .redactedThinking(let id, let data):
            ["data": .string(data), "id": .string(id), "seq": seq, "stream_id": streamID, "type": type]
        case .toolCallDelta(let id, let toolUseID, let name, let partialJSON):
            [
                "id": .string(id), "name": .string(name), "partial_json": .string(partialJSON), "seq": seq, "stream_id": streamID,
                "tool_use_id": .string(toolUseID), "type": type,
            ]
        case .toolCall(let id, let toolUseID, let name, let input):
            [
                "id": .string(id), "input": input, "name": .string(name), "seq": seq, "stream_id": streamID,
                "tool_use_id": .string(toolUseID), "type": type,
            ]
        case .contentBlock(let id, let index, let block):
            ["block": block, "id": .string(id), "index": .integer(index), "seq": seq, "stream_id": streamID, "type": type]
        case .citation(let id, let citation):
            ["citation": citation, "id": .string(id), "seq": seq, "stream_id": streamID, "type": type]
        case .messageRestart(let id, let reason):
            ["id": .string(id), "reason": .string(reason), "seq": seq, "stream_id": streamID, "type": type]
        case .upstreamRetry(let attempt, let reason, let delay, let mode):
            [
                "attempt": .integer(attempt), "delay_ms": .integer(delay), "mode": .string(mode.rawValue), "reason": .string(reason),
                "seq": seq, "stream_id": streamID, "type": type,
            ]
        case .toolStart(let id, let name, let input):
            ["id": .string(id), "input": input, "name": .string(name), "seq": seq, "stream_id": streamID, "type": type]
        case .toolProgress(let id, let message, let percentage?):
            [
                "id": .string(id), "message": .string(message), "percentage": .integer(percentage), "seq": seq,
                "stream_id": streamID, "type": type,
            ]
        case .toolProgress(let id, let message, nil):
            ["id": .string(id), "message": .string(message), "seq": seq, "stream_id": streamID, "type": type]
        case .toolComplete(let id, let output):
            ["id": .string(id), "output": output, "seq": seq, "stream_id": streamID, "type": type]
        case .toolError(let id, let error):
            ["error": .string(error), "id": .string(id), "seq": seq, "stream_id": streamID, "type": type]
        case .streamError(let error, let details?):
            ["details": details, "error": .string(error), "seq": seq, "stream_id": streamID, "type": type]
        case .streamError(let error, nil):
            ["error": .string(error), "seq": seq, "stream_id": streamID, "type": type]
        case .streamComplete(let usage, let message?):
            ["message": message, "seq": seq, "stream_id": streamID, "type": type, "usage": usage]
        case .streamComplete(let usage, nil):
            ["seq": seq, "stream_id": streamID, "type": type, "usage": usage]
        case .streamHandoff(let reason):
            ["reason": .string(reason), "seq": seq, "stream_id": streamID, "type": type]
        }
    }

    /// The JSON bytes of the frame, keys sorted as `JSONValue` sorts them. Written from the members in
    /// order, without building a dictionary and sorting it: this runs once per event of every stream.
    public func encoded(streamID: String, seq: Int) -> [UInt8] {
        var out: [UInt8] = []
        switch self {
        case .messageDelta(let id, let delta), .thinkingDelta(let id, let delta):
            // Nearly every frame of a stream: written straight, without the member list's array and boxed values,
            // and into one allocation of the right size. The same bytes (the tests compare).
            out.reserveCapacity(delta.utf8.count + id.utf8.count + streamID.utf8.count + 72)
            out.append(contentsOf: #"{"delta":"#.utf8)
            JSONValue.serialize(string: delta, into: &out)
            out.append(contentsOf: #","id":"#.utf8)
            JSONValue.serialize(string: id, into: &out)
            out.append(contentsOf: #","seq":"#.utf8)
            JSONNumber(seq).write(into: &out)
            out.append(contentsOf: #","stream_id":"#.utf8)
            JSONValue.serialize(string: streamID, into: &out)
            out.append(contentsOf: #","type":"#.utf8)
            JSONValue.serialize(string: type, into: &out)
            out.append(UInt8(ascii: "}"))
        default:
            out.reserveCapacity(128)
            JSONValue.serialize(members: members(streamID: streamID, seq: seq), into: &out)
        }
        return out
    }
}

/// How a retry continues the interrupted message.
public enum RetryMode: String, Sendable {
    /// Nothing reached the client yet: the retry is invisible in the text.
    case transparent
    /// The partial text is sent back as assistant prefill; the rest follows with no gap and no repeat.
    case `continue`
    /// Continuation is impossible: `message_restart` tells the client to drop the partial message.
    case restart
}
