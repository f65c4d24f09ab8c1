import SluiceWire

/// One event of a Sluice stream, as sent to clients (one JSON object per frame).
/// `seq` and `stream_id` are added by the stream's channel when the event is recorded.
public enum StreamEvent: Sendable, Equatable {
    case streamQueued(position: Int)
    case messageStart(id: String, role: String, model: String)
    case messageDelta(id: String, delta: String)
    case messageStop(id: String, stopReason: String?)
    case messageRestart(id: String, reason: String)
    case upstreamRetry(attempt: Int, reason: String, delayMilliseconds: Int, mode: RetryMode)
    case toolStart(id: String, name: String, input: JSONValue)
    case toolProgress(id: String, message: String, percentage: Int?)
    case toolComplete(id: String, output: JSONValue)
    case toolError(id: String, error: String)
    case streamError(error: String, details: JSONValue?)
    case streamComplete(usage: JSONValue)

    public var type: String {
        switch self {
        case .streamQueued: "stream_queued"
        case .messageStart: "message_start"
        case .messageDelta: "message_delta"
        case .messageStop: "message_stop"
        case .messageRestart: "message_restart"
        case .upstreamRetry: "upstream_retry"
        case .toolStart: "tool_start"
        case .toolProgress: "tool_progress"
        case .toolComplete: "tool_complete"
        case .toolError: "tool_error"
        case .streamError: "stream_error"
        case .streamComplete: "stream_complete"
        }
    }

    /// The event's own fields (without `stream_id`, `seq`, `type`), in key order.
    private var fields: KeyValuePairs<String, JSONValue> {
        switch self {
        case .streamQueued(let position): ["position": .integer(position)]
        case .messageStart(let id, let role, let model): ["id": .string(id), "model": .string(model), "role": .string(role)]
        case .messageDelta(let id, let delta): ["delta": .string(delta), "id": .string(id)]
        case .messageStop(let id, let stopReason): ["id": .string(id), "stop_reason": stopReason.map(JSONValue.string) ?? .null]
        case .messageRestart(let id, let reason): ["id": .string(id), "reason": .string(reason)]
        case .upstreamRetry(let attempt, let reason, let delay, let mode):
            [
                "attempt": .integer(attempt), "delay_ms": .integer(delay), "mode": .string(mode.rawValue),
                "reason": .string(reason),
            ]
        case .toolStart(let id, let name, let input): ["id": .string(id), "input": input, "name": .string(name)]
        case .toolProgress(let id, let message, let percentage):
            percentage.map { ["id": .string(id), "message": .string(message), "percentage": .integer($0)] }
                ?? ["id": .string(id), "message": .string(message)]
        case .toolComplete(let id, let output): ["id": .string(id), "output": output]
        case .toolError(let id, let error): ["error": .string(error), "id": .string(id)]
        case .streamError(let error, let details):
            details.map { ["details": $0, "error": .string(error)] } ?? ["error": .string(error)]
        case .streamComplete(let usage): ["usage": usage]
        }
    }

    /// The JSON bytes of the frame, keys sorted as `JSONValue` sorts them. Written directly, without
    /// building a dictionary: this runs once per event of every stream.
    public func encoded(streamID: String, seq: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(128)
        out.append(UInt8(ascii: "{"))
        // The three members every event has, merged in key order with the event's own.
        var common = 0
        func appendCommon(before key: String?) {
            while common < 3, key.map({ Self.commonKeys[common].utf8.lexicographicallyPrecedes($0.utf8) }) ?? true {
                if out.count > 1 { out.append(UInt8(ascii: ",")) }
                JSONValue.serialize(string: Self.commonKeys[common], into: &out)
                out.append(UInt8(ascii: ":"))
                switch common {
                case 0: JSONNumber(seq).write(into: &out)
                case 1: JSONValue.serialize(string: streamID, into: &out)
                default: JSONValue.serialize(string: type, into: &out)
                }
                common += 1
            }
        }
        for (key, value) in fields {
            appendCommon(before: key)
            if out.count > 1 { out.append(UInt8(ascii: ",")) }
            JSONValue.serialize(string: key, into: &out)
            out.append(UInt8(ascii: ":"))
            value.serialize(into: &out)
        }
        appendCommon(before: nil)
        out.append(UInt8(ascii: "}"))
        return out
    }

    private static let commonKeys = ["seq", "stream_id", "type"]
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
