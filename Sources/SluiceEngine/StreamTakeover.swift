import SluiceStore
import SluiceWire

/// A replica taking over a stream whose owner's lease lapsed: whether to claim it, and where to continue it from,
/// rebuilt from the events the store logged. Pure: the engine performs the claim and runs what it says.
struct StreamTakeover: Equatable {
    /// What the continued stream does first.
    enum Next: Equatable {
        /// No message started yet: the first turn starts as usual.
        case startTurn
        /// A message was under way: it is retried (`upstream_retry`, reason `replica_lost`) by the usual rules.
        case continueTurn(messageID: String, sentText: String, sawNonTextBlock: Bool)
        /// The model's last message stopped and asked for no tools: only `stream_complete` is missing.
        case complete
        /// The stream already ended in the log (its owner died after its last event, before its end reached the
        /// metadata): its status name (`OK` for `stream_complete`) and error message.
        case ended(status: String, message: String?)
        /// The log holds a tool round, whose conversation this replica does not rebuild; the stream ends with this.
        case unsupported(String)
    }

    /// The last logged seq: the continued stream emits from the next one.
    var lastSeq = 0
    /// `upstream_retry` events logged so far (each counted against the retry budget).
    var retries = 0
    var next = Next.startTurn
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

    /// Replays the logged events (in seq order, from seq 1) into the state the stream continues from.
    init(events: [(seq: Int, frame: JSONValue)]) {
        var messageID = ""
        var sentText = ""
        var sawNonTextBlock = false
        var toolRound = false
        // A turn that called a client tool ends the stream at its message_stop (the caller runs the tool).
        var calledClientTool = false
        for (seq, frame) in events {
            lastSeq = seq
            reason = frame["type"]?.stringValue == "stream_handoff" ? Self.handOff : Self.replicaLost
            switch frame["type"]?.stringValue ?? "" {
            case "message_start":
                messageID = frame["id"]?.stringValue ?? ""
                sentText = ""
                sawNonTextBlock = false
                calledClientTool = false
                next = .continueTurn(messageID: messageID, sentText: "", sawNonTextBlock: false)
            case "message_delta":
                sentText += frame["delta"]?.stringValue ?? ""
                next = .continueTurn(messageID: messageID, sentText: sentText, sawNonTextBlock: sawNonTextBlock)
            case "thinking_delta", "thinking_signature", "redacted_thinking", "tool_call_delta", "tool_call", "content_block":
                // A prefill cannot continue after a thinking, tool or hosted block: the retry restarts.
                sawNonTextBlock = true
                if frame["type"]?.stringValue == "tool_call" { calledClientTool = true }
                next = .continueTurn(messageID: messageID, sentText: sentText, sawNonTextBlock: true)
            case "message_restart":
                sentText = ""
                sawNonTextBlock = false
                calledClientTool = false
                next = .continueTurn(messageID: messageID, sentText: "", sawNonTextBlock: false)
            case "upstream_retry":
                retries += 1
            case "message_stop":
                next =
                    frame["stop_reason"]?.stringValue == "tool_use" && !calledClientTool
                    ? .unsupported("its owner died during a tool round, which another replica cannot continue yet") : .complete
            case "tool_start", "tool_progress", "tool_complete", "tool_error":
                toolRound = true
                next = .unsupported("its owner died during a tool round, which another replica cannot continue yet")
            case "stream_complete":
                next = .ended(status: "OK", message: nil)
            case "stream_error":
                next = .ended(status: frame["details"]?["code"]?.stringValue ?? "UNKNOWN", message: frame["error"]?.stringValue)
            default:
                continue
            }
            if toolRound, case .continueTurn = next {
                next = .unsupported("its owner died in a turn after a tool round, which another replica cannot continue yet")
            }
        }
    }
}
