import SluiceWire

/// A tool's input as far as the stream has delivered it.
public enum ToolInput: Sendable, Equatable {
    /// Parsed at `content_block_stop`.
    case parsed(JSONValue)
    /// The concatenated `partial_json` did not parse at `content_block_stop`.
    case invalid(json: String, error: String)
    /// `content_block_stop` has not arrived yet.
    case incomplete(json: String)
}

/// The Message a stream has built so far (the whole Message once `message_stop` has arrived).
public struct AccumulatedMessage: Sendable, Equatable {
    public enum Block: Sendable, Equatable {
        case text(String, citations: [JSONValue])
        case toolUse(id: String, name: String, input: ToolInput)
        case thinking(String, signature: String)
        case redactedThinking(data: String)
        /// A block type not modelled here, as `content_block_start` gave it.
        case other(JSONValue)
    }

    public var id: String
    public var model: String
    public var role: String
    /// In index order.
    public var content: [Block]
    public var stopReason: String?
    public var stopSequence: String?
    public var usage: AnthropicUsage

    /// The Messages API's Message JSON. A tool input that is not `.parsed` renders as `{}`; usage fields the
    /// stream never reported and text blocks' absent `citations` are omitted rather than `null`.
    public var jsonValue: JSONValue {
        .object([
            "id": .string(id),
            "type": "message",
            "role": .string(role),
            "model": .string(model),
            "content": .array(content.map(\.jsonValue)),
            "stop_reason": stopReason.map(JSONValue.string) ?? .null,
            "stop_sequence": stopSequence.map(JSONValue.string) ?? .null,
            "usage": usage.jsonValue,
        ])
    }
}

extension AccumulatedMessage.Block {
    public var jsonValue: JSONValue {
        switch self {
        case .text(let text, let citations):
            var object: [String: JSONValue] = ["type": "text", "text": .string(text)]
            if !citations.isEmpty { object["citations"] = .array(citations) }
            return .object(object)
        case .toolUse(let id, let name, let input):
            let inputValue: JSONValue = if case .parsed(let value) = input { value } else { [:] }
            return ["type": "tool_use", "id": .string(id), "name": .string(name), "input": inputValue]
        case .thinking(let thinking, let signature):
            return ["type": "thinking", "thinking": .string(thinking), "signature": .string(signature)]
        case .redactedThinking(let data):
            return ["type": "redacted_thinking", "data": .string(data)]
        case .other(let raw):
            return raw
        }
    }
}

/// Rebuilds the final Message from stream events, as the official SDKs' stream helpers do.
///
/// Never throws: events that don't fit (a delta for an unknown index or of the wrong kind for its block)
/// are ignored like the SDKs ignore them, and a tool input that fails to parse is recorded on its block.
public struct MessageAccumulator: Sendable {
    /// Mutable per-block state, so deltas append in place (amortised O(1)) instead of copying strings.
    private struct BlockState {
        let start: AnthropicContentBlock
        /// Text, thinking text, or a tool's concatenated `partial_json`.
        var text: String
        var signature = ""
        var citations: [JSONValue] = []
        /// A tool input (a client or server tool's), parsed once at `content_block_stop`.
        var toolInput: ToolInput?
    }

    private var id = ""
    private var model = ""
    private var role = "assistant"
    private var blocks: [Int: BlockState] = [:]
    private var stopReason: String?
    private var stopSequence: String?
    /// Usage so far (message_start's, updated by each message_delta).
    public private(set) var usage = AnthropicUsage()

    /// `message_stop` has arrived.
    public private(set) var isComplete = false

    public init() {}

    public mutating func apply(_ event: AnthropicEvent) {
        switch event {
        case .messageStart(let id, let model, let role, let usage):
            self.id = id
            self.model = model
            self.role = role
            self.usage = usage
        case .contentBlockStart(let index, let block):
            let text =
                switch block {
                case .text(let text), .thinking(let text): text
                case .toolUse, .redactedThinking, .other: ""
                }
            blocks[index] = BlockState(start: block, text: text)
        case .contentBlockDelta(let index, let delta):
            guard let start = blocks[index]?.start else { return }
            switch (start, delta) {
            case (.text, .text(let more)), (.thinking, .thinking(let more)):
                blocks[index]!.text += more
            case (.text, .citation(let citation)):
                blocks[index]!.citations.append(citation)
            case (.toolUse, .inputJSON(let more)) where blocks[index]!.toolInput == nil,
                // A server tool's call (`server_tool_use`) streams its input as a client tool's does.
                (.other, .inputJSON(let more)) where blocks[index]!.toolInput == nil:
                blocks[index]!.text += more
            case (.thinking, .signature(let signature)):
                blocks[index]!.signature = signature
            default:
                break
            }
        case .contentBlockStop(let index):
            guard let block = blocks[index], block.toolInput == nil else { return }
            switch block.start {
            case .toolUse: blocks[index]!.toolInput = Self.parseToolInput(block.text)
            case .other where !block.text.isEmpty: blocks[index]!.toolInput = Self.parseToolInput(block.text)
            default: break
            }
        case .messageDelta(let stopReason, let stopSequence, let usage):
            self.stopReason = stopReason
            self.stopSequence = stopSequence
            self.usage.update(with: usage)
        case .messageStop:
            isComplete = true
        case .ping, .error, .unknown:
            break
        }
    }

    /// The SDKs treat an empty input (a tool without parameters) as `{}`.
    private static func parseToolInput(_ json: String) -> ToolInput {
        if json.isEmpty { return .parsed([:]) }
        do throws(JSONParseError) {
            return .parsed(try JSONValue(parsing: json))
        } catch {
            return .invalid(json: json, error: error.description)
        }
    }

    /// The block at `index` so far (whole once its `content_block_stop` has arrived).
    public func block(at index: Int) -> AccumulatedMessage.Block? {
        guard let state = blocks[index] else { return nil }
        switch state.start {
        case .text: return .text(state.text, citations: state.citations)
        case .toolUse(let id, let name):
            return .toolUse(id: id, name: name, input: state.toolInput ?? .incomplete(json: state.text))
        case .thinking: return .thinking(state.text, signature: state.signature)
        case .redactedThinking(let data): return .redactedThinking(data: data)
        case .other(_, let raw):
            guard case .parsed(let input)? = state.toolInput, case .object(var object) = raw else { return .other(raw) }
            object["input"] = input
            return .other(.object(object))
        }
    }

    /// The Message so far.
    public func message() -> AccumulatedMessage {
        AccumulatedMessage(
            id: id,
            model: model,
            role: role,
            content: blocks.keys.sorted().map { block(at: $0)! },
            stopReason: stopReason,
            stopSequence: stopSequence,
            usage: usage
        )
    }

    /// `message().jsonValue`.
    public var jsonValue: JSONValue { message().jsonValue }
}
