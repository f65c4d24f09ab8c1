import SluiceStore
import SluiceWire

/// A replica taking over a stream whose owner's lease lapsed: whether to claim it, and where to continue it from,
/// rebuilt from the events the store logged. Pure: the engine performs the claim and runs what it says.
///
/// Server tool rounds are rebuilt from their events: a finished round (the next turn's `message_start` is logged)
/// gives the assistant turn (thinking with signatures, text, hosted blocks, and a `tool_use` per `tool_start` with
/// its logged input) and the user turn of its results (`tool_complete` output, `tool_error` as an error result). A
/// round the owner died in is not known whole (a tool not yet started has logged nothing), so the turn that asked
/// for it is restarted like any retry after a tool block: `message_restart`, and the model asks again; its tools run
/// again (they are read-only), their earlier events kept in the log.
struct StreamTakeover: Equatable {
    /// What the continued stream does first.
    enum Next: Equatable {
        /// No message started yet: the first turn starts as usual.
        case startTurn
        /// A message was under way: it is retried (`upstream_retry`, reason `replica_lost`) by the usual rules.
        case continueTurn(messageID: String, sentText: String, sawNonTextBlock: Bool)
        /// The model's last message stopped and asked for no server tools: only `stream_complete` is missing.
        case complete
        /// The stream already ended in the log (its owner died after its last event, before its end reached the
        /// metadata): its status name (`OK` for `stream_complete`) and error message.
        case ended(status: String, message: String?)
        /// The log cannot be continued from (it contradicts itself); the stream ends with this.
        case unsupported(String)
    }

    /// The last logged seq: the continued stream emits from the next one.
    var lastSeq = 0
    /// `upstream_retry` events logged so far (each counted against the retry budget).
    var retries = 0
    var next = Next.startTurn
    /// The finished tool rounds, as the turns that follow the request's messages: assistant, user, assistant, ….
    var conversation: [JSONValue] = []
    /// Model turns finished before the one the stream continues with (each asked for tools).
    var finishedTurns = 0
    /// The continuation's `upstream_retry` reason: `handoff` when the log ends with the owner's `stream_handoff` (it
    /// shut down and let go of the stream), `replica_lost` when it ends anywhere else (the owner died or hung).
    var reason = StreamTakeover.replicaLost

    static let replicaLost = "replica_lost"
    static let handOff = "handoff"

    /// Claim only a stream that still runs, whose owner's lease lapsed, whose log is whole, while this replica has
    /// room for it (a takeover counts against `--max-active`).
    static func shouldClaim(_ metadata: StoredStreamMetadata, hasCapacity: Bool) -> Bool {
        metadata.status == "running" && metadata.leaseHolder == nil && metadata.resumable && hasCapacity
    }

    /// One message as the log shows it, enough to send it back to the API as the assistant turn.
    private struct LoggedMessage {
        var id = ""
        var text = ""
        var sawNonTextBlock = false
        var calledClientTool = false
        /// Thinking (with its signature), redacted thinking and hosted blocks, in order.
        var blocks: [JSONValue] = []
        var thinking = ""

        /// The assistant content: its thinking first (the API wants it first), then the text, then hosted blocks.
        var content: [JSONValue] {
            func isThinking(_ block: JSONValue) -> Bool {
                let type = block["type"]?.stringValue
                return type == "thinking" || type == "redacted_thinking"
            }
            let text: [JSONValue] = text.isEmpty ? [] : [["type": "text", "text": .string(text)]]
            return blocks.filter(isThinking) + text + blocks.filter { !isThinking($0) }
        }
    }

    /// A server tool round under way: the message that asked for it, and its tools as they started and ended.
    private struct ToolRound {
        var message: LoggedMessage
        var calls: [(id: String, name: String, input: JSONValue)] = []
        var results: [String: JSONValue] = [:]
    }

    /// Replays the logged events (in seq order, from seq 1) into the state the stream continues from.
    /// `resultContent`: a tool's output as the model gets it (`ToolRunner.modelContent`).
    init(events: [(seq: Int, frame: JSONValue)], resultContent: (JSONValue) -> String = { $0.serializedString }) {
        var message = LoggedMessage()
        var round: ToolRound?
        for (seq, frame) in events {
            lastSeq = seq
            reason = frame["type"]?.stringValue == "stream_handoff" ? Self.handOff : Self.replicaLost
            switch frame["type"]?.stringValue ?? "" {
            case "message_start":
                if let finished = round {
                    // The next turn began: every tool of the round had ended.
                    guard finished.calls.allSatisfy({ finished.results[$0.id] != nil }) else {
                        next = .unsupported("its log shows a turn after a tool round whose results are missing")
                        return
                    }
                    let uses: [JSONValue] = finished.calls.map {
                        ["type": "tool_use", "id": .string($0.id), "name": .string($0.name), "input": $0.input]
                    }
                    conversation.append(["role": "assistant", "content": .array(finished.message.content + uses)])
                    conversation.append(["role": "user", "content": .array(finished.calls.compactMap { finished.results[$0.id] })])
                    finishedTurns += 1
                    round = nil
                }
                message = LoggedMessage(id: frame["id"]?.stringValue ?? "")
            case "message_delta":
                message.text += frame["delta"]?.stringValue ?? ""
            case "thinking_delta":
                message.thinking += frame["delta"]?.stringValue ?? ""
                message.sawNonTextBlock = true
            case "thinking_signature":
                message.blocks.append(
                    ["type": "thinking", "thinking": .string(message.thinking), "signature": frame["signature"] ?? .string("")])
                message.thinking = ""
                message.sawNonTextBlock = true
            case "redacted_thinking":
                message.blocks.append(["type": "redacted_thinking", "data": frame["data"] ?? .string("")])
                message.sawNonTextBlock = true
            case "content_block":
                if let block = frame["block"] { message.blocks.append(block) }
                message.sawNonTextBlock = true
            case "tool_call_delta", "tool_call":
                // A prefill cannot continue after a tool block: the retry restarts. A client tool call ends the stream at
                // its message_stop (the caller runs it).
                message.sawNonTextBlock = true
                if frame["type"]?.stringValue == "tool_call" { message.calledClientTool = true }
            case "message_restart":
                message = LoggedMessage(id: message.id)
            case "upstream_retry":
                retries += 1
                continue
            case "message_stop":
                if frame["stop_reason"]?.stringValue == "tool_use" && !message.calledClientTool {
                    round = ToolRound(message: message)
                } else {
                    next = .complete
                    continue
                }
            case "tool_start":
                round?.calls.append(
                    (frame["id"]?.stringValue ?? "", frame["name"]?.stringValue ?? "", frame["input"] ?? [:]))
            case "tool_complete":
                if let id = frame["id"]?.stringValue {
                    round?.results[id] = [
                        "type": "tool_result", "tool_use_id": .string(id), "content": .string(resultContent(frame["output"] ?? .null)),
                    ]
                }
            case "tool_error":
                if let id = frame["id"]?.stringValue {
                    round?.results[id] = [
                        "type": "tool_result", "tool_use_id": .string(id), "content": frame["error"] ?? .string(""), "is_error": true,
                    ]
                }
            case "stream_complete":
                next = .ended(status: "OK", message: nil)
                continue
            case "stream_error":
                next = .ended(status: frame["details"]?["code"]?.stringValue ?? "UNKNOWN", message: frame["error"]?.stringValue)
                continue
            default:
                continue
            }
            // The owner died in a tool round: the turn that asked for it starts again (a tool block was sent, so it is
            // a restart); otherwise the message under way goes on.
            let current = round?.message ?? message
            next = .continueTurn(
                messageID: current.id, sentText: current.text, sawNonTextBlock: current.sawNonTextBlock || round != nil)
        }
    }
}
