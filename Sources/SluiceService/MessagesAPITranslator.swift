import SluiceWire

/// Turns a Sluice stream's events into the Anthropic Messages API's own answer: its SSE events
/// (`message_start`, `content_block_start`/`_delta`/`_stop` with their indices, `message_delta`, `message_stop`,
/// `error`) for `"stream": true`, and the final Message for a non-streaming request. A value type, tested alone;
/// `MessagesService` feeds it the frames and writes what it returns.
///
/// Block boundaries come from the event types: a text, thinking or tool call event after a block of another
/// kind (or another tool call) starts a new block; a thinking block ends with its signature, a client tool call
/// with `tool_call`, a block Sluice does not model arrives whole (`content_block`). A citation after text of the
/// same block starts a new text block, as the API sends a block's citations before its text.
///
/// Retries: a transparent one and a continuation are invisible (a continued text block goes on with the same
/// index). A restart (`message_restart`) before any block of its turn reached the client is invisible too;
/// after one, the stream ends with an `overloaded_error` event, as the API ends a stream it cannot finish, and
/// the SDK's caller retries from the start.
///
/// Sluice's server tools (`--messages-server-tools`) look like the API's own: later turns continue the same
/// message, and each call is a `server_tool_use` block followed by its `<name>_tool_result` block (the API's
/// naming, as `web_fetch` → `web_fetch_tool_result`) whose `content` is the tool's output typed
/// `<name>_result`, or `{"type": "<name>_tool_result_error", "error_code": "execution_error", "error_message"}`.
/// Both arrive whole, as a hosted tool's blocks do.
public struct MessagesAPITranslator: Sendable {
    /// What translating one frame gives.
    public struct Step: Equatable, Sendable {
        /// SSE events `(name, data)` for a streaming response, in order.
        public var events: [Event] = []
        /// Set when the stream has ended: the Message, or the error the client gets.
        public var outcome: Outcome?
    }

    public struct Event: Equatable, Sendable {
        public var name: String
        public var data: JSONValue

        /// `event: name`, `data: json`, a blank line.
        public var encoded: [UInt8] { SSEEncoder.encode(event: name, data: data.serializedString) }
    }

    public enum Outcome: Equatable, Sendable {
        /// The whole Message, as the non-streaming API returns it.
        case message(JSONValue)
        case failed(MessagesAPIError)
        /// A restart after content had reached the client: the stream ends with an error.
        case restartedAfterContent(MessagesAPIError)
    }

    private enum OpenBlock: Equatable {
        case none
        case text(hasText: Bool)
        case thinking
        case toolUse(id: String)
    }

    /// A block as the final Message holds it: its start, and what its deltas added.
    private struct BlockContent {
        var start: JSONValue
        var text = ""
        var signature = ""
        var citations: [JSONValue] = []

        var block: JSONValue {
            guard case .object(var fields) = start else { return start }
            switch fields["type"]?.stringValue {
            case "text":
                fields["text"] = .string(text)
                if !citations.isEmpty { fields["citations"] = .array(citations) }
            case "thinking":
                fields["thinking"] = .string(text)
                fields["signature"] = .string(signature)
            default:
                break
            }
            return .object(fields)
        }
    }

    let model: String
    private var messageID: String?
    private var open = OpenBlock.none
    private var nextIndex = 0
    /// The index of the current turn's first block: a later turn (after Sluice's server tools) starts after
    /// the earlier turns' blocks.
    private var turnStartIndex = 0
    /// The blocks of the turns before the current one and of this turn so far, closed: a non-streaming answer
    /// is the earlier turns' blocks followed by the final turn's message. (Earlier turns hold no client tool
    /// call: one ends the stream.)
    private var blocks: [JSONValue] = []
    private var building: BlockContent?
    /// The names of the server tool calls under way, by tool use id (their results name the tool).
    private var serverToolNames: [String: String] = [:]
    private var stopReason: JSONValue = .null
    private var stopSequence: JSONValue = .null
    private var finished = false

    public init(model: String) {
        self.model = model
    }

    /// A content block of the current turn has reached the client: its restart can no longer be hidden.
    public var sentContent: Bool { nextIndex > turnStartIndex }

    /// The `ping` the API sends while a response is slow to start (Sluice sends it while the request is queued).
    public static let ping = Event(name: "ping", data: ["type": "ping"])

    /// Translates one Sluice event (its `type` and parsed frame).
    public mutating func translate(type: String, frame: JSONValue) -> Step {
        guard !finished else { return Step() }
        var step = Step()
        switch type {
        case "stream_queued":
            step.events.append(Self.ping)
        case "message_start":
            // Later turns (after Sluice's server tools) continue the first turn's message.
            guard messageID == nil else {
                turnStartIndex = nextIndex
                break
            }
            let id = frame["id"]?.stringValue ?? "msg_sluice"
            messageID = id
            let message: JSONValue = [
                "id": .string(id), "type": "message", "role": "assistant", "model": .string(model), "content": [],
                "stop_reason": .null, "stop_sequence": .null, "usage": ["input_tokens": 0, "output_tokens": 0],
            ]
            step.events.append(Event(name: "message_start", data: ["type": "message_start", "message": message]))
        case "message_delta":
            if case .text = open {} else { startBlock(["type": "text", "text": ""], open: .text(hasText: false), into: &step) }
            open = .text(hasText: true)
            delta(["type": "text_delta", "text": frame["delta"] ?? ""], into: &step)
        case "citation":
            if open != .text(hasText: false) { startBlock(["type": "text", "text": ""], open: .text(hasText: false), into: &step) }
            delta(["type": "citations_delta", "citation": frame["citation"] ?? .null], into: &step)
        case "thinking_delta":
            if open != .thinking { startBlock(["type": "thinking", "thinking": "", "signature": ""], open: .thinking, into: &step) }
            delta(["type": "thinking_delta", "thinking": frame["delta"] ?? ""], into: &step)
        case "thinking_signature":
            if open != .thinking { startBlock(["type": "thinking", "thinking": "", "signature": ""], open: .thinking, into: &step) }
            delta(["type": "signature_delta", "signature": frame["signature"] ?? ""], into: &step)
            closeBlock(into: &step)
        case "redacted_thinking":
            startBlock(["type": "redacted_thinking", "data": frame["data"] ?? ""], open: .none, into: &step)
        case "tool_call_delta":
            let toolUseID = frame["tool_use_id"]?.stringValue ?? ""
            if open != .toolUse(id: toolUseID) {
                let block: JSONValue = ["type": "tool_use", "id": .string(toolUseID), "name": frame["name"] ?? "", "input": [:]]
                startBlock(block, open: .toolUse(id: toolUseID), into: &step)
            }
            delta(["type": "input_json_delta", "partial_json": frame["partial_json"] ?? ""], into: &step)
        case "tool_call":
            let toolUseID = frame["tool_use_id"]?.stringValue ?? ""
            if open != .toolUse(id: toolUseID) {
                // No fragments reached the client: the block carries its whole input.
                let block: JSONValue = [
                    "type": "tool_use", "id": .string(toolUseID), "name": frame["name"] ?? "", "input": frame["input"] ?? [:],
                ]
                startBlock(block, open: .none, into: &step)
            } else {
                closeBlock(into: &step)
            }
        case "content_block":
            // Server tool use, its result, new block types: whole, as the API sends a hosted tool's result.
            startBlock(frame["block"] ?? [:], open: .none, into: &step)
        case "tool_start":
            let toolUseID = frame["id"]?.stringValue ?? ""
            let name = frame["name"]?.stringValue ?? ""
            serverToolNames[toolUseID] = name
            let block: JSONValue = [
                "type": "server_tool_use", "id": .string(toolUseID), "name": .string(name), "input": frame["input"] ?? [:],
            ]
            startBlock(block, open: .none, into: &step)
        case "tool_complete", "tool_error":
            let toolUseID = frame["id"]?.stringValue ?? ""
            let name = serverToolNames.removeValue(forKey: toolUseID) ?? "server_tool"
            let content: JSONValue
            if type == "tool_error" {
                content = [
                    "type": .string("\(name)_tool_result_error"), "error_code": "execution_error", "error_message": frame["error"] ?? "",
                ]
            } else if case .object(var output)? = frame["output"] {
                output["type"] = .string("\(name)_result")
                content = .object(output)
            } else {
                content = ["type": .string("\(name)_result"), "output": frame["output"] ?? .null]
            }
            let block: JSONValue = ["type": .string("\(name)_tool_result"), "tool_use_id": .string(toolUseID), "content": content]
            startBlock(block, open: .none, into: &step)
        case "message_stop":
            closeBlock(into: &step)
            stopReason = frame["stop_reason"] ?? .null
            stopSequence = frame["stop_sequence"] ?? .null
        case "message_restart":
            if sentContent {
                let error = MessagesAPIError(
                    status: 529, type: "overloaded_error",
                    message:
                        "the upstream stream was interrupted after content reached you and could not be continued (\(frame["reason"]?.stringValue ?? "restart")); send the request again"
                )
                finish(.restartedAfterContent(error), into: &step)
            } else {
                open = .none
            }
        case "stream_complete":
            closeBlock(into: &step)
            let usage = frame["usage"] ?? ["input_tokens": 0, "output_tokens": 0]
            step.events.append(
                Event(
                    name: "message_delta",
                    data: ["type": "message_delta", "delta": ["stop_reason": stopReason, "stop_sequence": stopSequence], "usage": usage]))
            step.events.append(Event(name: "message_stop", data: ["type": "message_stop"]))
            let message: JSONValue = [
                "id": .string(messageID ?? "msg_sluice"), "type": "message", "role": "assistant", "model": .string(model),
                "content": .array(Array(blocks.prefix(turnStartIndex)) + (frame["message"]?["content"]?.arrayValue ?? [])),
                "stop_reason": stopReason, "stop_sequence": stopSequence,
                "usage": usage,
            ]
            finished = true
            step.outcome = .message(message)
        case "stream_error":
            finish(.failed(MessagesAPIError(streamError: frame)), into: &step)
        default:
            // upstream_retry (invisible here), Sluice's tool progress and types added later.
            break
        }
        return step
    }

    private mutating func finish(_ outcome: Outcome, into step: inout Step) {
        switch outcome {
        case .failed(let error), .restartedAfterContent(let error):
            step.events.append(Event(name: "error", data: error.body))
        case .message:
            break
        }
        finished = true
        step.outcome = outcome
    }

    /// Ends the open block, starts `block` at the next index; a block that arrives whole (`open: .none`) ends at once.
    private mutating func startBlock(_ block: JSONValue, open newOpen: OpenBlock, into step: inout Step) {
        closeBlock(into: &step)
        step.events.append(
            Event(
                name: "content_block_start",
                data: ["type": "content_block_start", "index": .integer(nextIndex), "content_block": block]))
        nextIndex += 1
        open = newOpen
        if newOpen == .none {
            blocks.append(block)
            step.events.append(Event(name: "content_block_stop", data: ["type": "content_block_stop", "index": .integer(nextIndex - 1)]))
        } else {
            building = BlockContent(start: block)
        }
    }

    private mutating func closeBlock(into step: inout Step) {
        guard open != .none else { return }
        step.events.append(Event(name: "content_block_stop", data: ["type": "content_block_stop", "index": .integer(nextIndex - 1)]))
        open = .none
        if let building { blocks.append(building.block) }
        building = nil
    }

    private mutating func delta(_ delta: JSONValue, into step: inout Step) {
        switch delta["type"]?.stringValue {
        case "text_delta": building?.text += delta["text"]?.stringValue ?? ""
        case "thinking_delta": building?.text += delta["thinking"]?.stringValue ?? ""
        case "signature_delta": building?.signature = delta["signature"]?.stringValue ?? ""
        case "citations_delta": building?.citations.append(delta["citation"] ?? .null)
        default: break  // a client tool call's input: only in the final turn, whose message the engine assembles
        }
        step.events.append(
            Event(name: "content_block_delta", data: ["type": "content_block_delta", "index": .integer(nextIndex - 1), "delta": delta]))
    }
}
