import SluiceWire

/// Token counts as the Messages API reports them. Every field is optional because `message_delta` sends only
/// what changed; its counts are cumulative, so a present field replaces the previous value.
public struct AnthropicUsage: Sendable, Equatable {
    public var inputTokens: Int?
    public var outputTokens: Int?
    public var cacheCreationInputTokens: Int?
    public var cacheReadInputTokens: Int?
    /// Every other usage field the API reports (`server_tool_use`, `cache_creation`, `service_tier`, ones
    /// added later), as sent: nothing the API counts is dropped.
    public var other: [String: JSONValue]

    public init(
        inputTokens: Int? = nil,
        outputTokens: Int? = nil,
        cacheCreationInputTokens: Int? = nil,
        cacheReadInputTokens: Int? = nil,
        other: [String: JSONValue] = [:]
    ) {
        self.inputTokens = inputTokens
        self.outputTokens = outputTokens
        self.cacheCreationInputTokens = cacheCreationInputTokens
        self.cacheReadInputTokens = cacheReadInputTokens
        self.other = other
    }

    static let countFields = ["input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"]

    /// Takes every field `newer` carries.
    public mutating func update(with newer: AnthropicUsage) {
        inputTokens = newer.inputTokens ?? inputTokens
        outputTokens = newer.outputTokens ?? outputTokens
        cacheCreationInputTokens = newer.cacheCreationInputTokens ?? cacheCreationInputTokens
        cacheReadInputTokens = newer.cacheReadInputTokens ?? cacheReadInputTokens
        other.merge(newer.other) { _, newer in newer }
    }

    /// Adds `more` (another attempt or turn): counts add, nested objects (`server_tool_use`) add member by
    /// member, and anything that is not a count (`service_tier`) takes the later value.
    public mutating func add(_ more: AnthropicUsage) {
        func sum(_ a: Int?, _ b: Int?) -> Int? { a == nil && b == nil ? nil : (a ?? 0) + (b ?? 0) }
        inputTokens = sum(inputTokens, more.inputTokens)
        outputTokens = sum(outputTokens, more.outputTokens)
        cacheCreationInputTokens = sum(cacheCreationInputTokens, more.cacheCreationInputTokens)
        cacheReadInputTokens = sum(cacheReadInputTokens, more.cacheReadInputTokens)
        other.merge(more.other, uniquingKeysWith: Self.sum)
    }

    private static func sum(_ a: JSONValue, _ b: JSONValue) -> JSONValue {
        switch (a, b) {
        case (.number(let x), .number(let y)):
            guard let x = x.int64Value, let y = y.int64Value else { return b }
            return .integer(x &+ y)
        case (.object(let x), .object(let y)):
            return .object(x.merging(y, uniquingKeysWith: sum))
        default:
            return b
        }
    }

    /// The API's `usage` object: the fields the stream reported, nothing invented.
    public var jsonValue: JSONValue {
        var object = other
        let fields: [(String, Int?)] = [
            ("input_tokens", inputTokens),
            ("output_tokens", outputTokens),
            ("cache_creation_input_tokens", cacheCreationInputTokens),
            ("cache_read_input_tokens", cacheReadInputTokens),
        ]
        for case (let key, let value?) in fields { object[key] = .integer(value) }
        return .object(object)
    }
}

/// The `content_block` of a `content_block_start` event.
public enum AnthropicContentBlock: Sendable, Equatable {
    /// Initial text (normally empty).
    case text(String)
    case toolUse(id: String, name: String)
    /// Initial thinking text (normally empty).
    case thinking(String)
    case redactedThinking(data: String)
    /// A block type Sluice doesn't model (server tool use, search results, …), kept whole.
    case other(type: String, raw: JSONValue)
}

extension AnthropicContentBlock {
    public var isText: Bool {
        if case .text = self { true } else { false }
    }
}

/// The `delta` of a `content_block_delta` event.
public enum AnthropicDelta: Sendable, Equatable {
    case text(String)
    /// A fragment of a tool's input JSON; fragments split anywhere, even inside a token.
    case inputJSON(String)
    case thinking(String)
    case signature(String)
    case citation(JSONValue)
    case other(type: String, raw: JSONValue)
}

/// One event of a streamed Messages API response.
public enum AnthropicEvent: Sendable, Equatable {
    case messageStart(id: String, model: String, role: String, usage: AnthropicUsage)
    case contentBlockStart(index: Int, block: AnthropicContentBlock)
    case contentBlockDelta(index: Int, delta: AnthropicDelta)
    case contentBlockStop(index: Int)
    case messageDelta(stopReason: String?, stopSequence: String?, usage: AnthropicUsage)
    case messageStop
    case ping
    /// A mid-stream error (after HTTP 200), e.g. `overloaded_error`.
    case error(type: String, message: String, requestID: String?)
    /// An event type this version doesn't know; the API may add new ones, which clients must ignore.
    case unknown(event: String)
}

public struct AnthropicDecodingError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The SSE event name whose payload was malformed.
    public var event: String
    public var reason: String

    public init(event: String, reason: String) {
        self.event = event
        self.reason = reason
    }

    public var description: String { "malformed Anthropic '\(event)' event: \(reason)" }
}

extension AnthropicEvent {
    /// Decodes one SSE event. The SSE event name decides the type; an unnamed event falls back to the
    /// payload's `type`. Unknown event, block and delta types decode to `.unknown` / `.other`.
    public static func decode(_ sse: SSEEvent) throws(AnthropicDecodingError) -> AnthropicEvent {
        let name = sse.event
        switch name {
        case "ping": return .ping
        case "message_stop": return .messageStop
        case "content_block_delta":
            // Nearly every event of an answer: its text read without building a JSON tree.
            if let (index, text) = textDelta(payload: sse.data) { return .contentBlockDelta(index: index, delta: .text(text)) }
        case "message_start", "content_block_start", "content_block_stop", "message_delta", "error":
            break
        case "message":
            // Unnamed event: dispatch on the payload's own `type`, if it parses.
            guard let type = (try? JSONValue(parsing: sse.data))?["type"]?.stringValue, type != "message" else {
                return .unknown(event: name)
            }
            return try decode(SSEEvent(event: type, data: sse.data, id: sse.id, retry: sse.retry))
        default:
            return .unknown(event: name)
        }

        let json: JSONValue
        do throws(JSONParseError) {
            json = try JSONValue(parsing: sse.data)
        } catch {
            throw AnthropicDecodingError(event: name, reason: error.description)
        }
        guard let root = json.objectValue else {
            throw AnthropicDecodingError(event: name, reason: "payload is not a JSON object")
        }
        let payload = Payload(event: name, root: root)

        switch name {
        case "message_start":
            let message = try payload.object("message")
            return .messageStart(
                id: try payload.string("id", in: message),
                model: try payload.string("model", in: message),
                role: try payload.optionalString("role", in: message) ?? "assistant",
                usage: try payload.usage(message["usage"])
            )
        case "content_block_start":
            let block = try payload.object("content_block")
            return .contentBlockStart(index: try payload.index(), block: try payload.contentBlock(block))
        case "content_block_delta":
            let delta = try payload.object("delta")
            return .contentBlockDelta(index: try payload.index(), delta: try payload.delta(delta))
        case "content_block_stop":
            return .contentBlockStop(index: try payload.index())
        case "message_delta":
            let delta = try payload.object("delta")
            return .messageDelta(
                stopReason: try payload.optionalString("stop_reason", in: delta),
                stopSequence: try payload.optionalString("stop_sequence", in: delta),
                usage: try payload.usage(root["usage"])
            )
        default:  // "error"
            let error = try payload.object("error")
            return .error(
                type: try payload.string("type", in: error),
                message: try payload.optionalString("message", in: error) ?? "",
                requestID: try payload.optionalString("request_id", in: root)
            )
        }
    }
}

extension AnthropicEvent {
    /// The block index and text of a `content_block_delta` payload carrying a `text_delta`, read straight from
    /// its bytes, without the JSON tree (dictionaries, hashed keys, boxed values) that `decode` builds for other
    /// events. Takes only that exact shape: an object whose members are `type` ("content_block_delta"), `index`
    /// (a non-negative integer written as plain digits) and `delta` (an object whose members are `type`
    /// ("text_delta") and `text`, any JSON string), each once, in any order, JSON whitespace anywhere. Anything
    /// else is nil, and `decode` parses it in full; whenever this answers, the full parse gives the same event
    /// (the unit tests and the FuzzSSE fuzzer check it).
    public static func textDelta(payload: String) -> (index: Int, text: String)? {
        var payload = payload
        return payload.withUTF8 { bytes in
            var reader = TextDeltaReader(bytes: bytes)
            return reader.read()
        }
    }
}

/// Reads one `content_block_delta` + `text_delta` payload (see `AnthropicEvent.textDelta(payload:)`).
private struct TextDeltaReader {
    private enum Key {
        case type, index, delta, text
    }

    let bytes: UnsafeBufferPointer<UInt8>
    private var position = 0

    init(bytes: UnsafeBufferPointer<UInt8>) {
        self.bytes = bytes
    }

    /// Digits beyond this could overflow `Int`; such an index is left to the full parse.
    private static let maxIndexDigits = 18

    mutating func read() -> (index: Int, text: String)? {
        var sawType = false
        var index: Int?
        var text: String?
        guard enterObject() else { return nil }
        var more = true
        while more {
            switch readKey() {
            case .type? where !sawType:
                guard readExactString("content_block_delta") else { return nil }
                sawType = true
            case .index? where index == nil:
                guard let value = readIndex() else { return nil }
                index = value
            case .delta? where text == nil:
                guard let value = readDelta() else { return nil }
                text = value
            default:
                return nil
            }
            guard let next = nextMember() else { return nil }
            more = next
        }
        guard sawType, let index, let text else { return nil }
        skipWhitespace()
        guard position == bytes.count else { return nil }
        return (index, text)
    }

    /// The `delta` object's text.
    private mutating func readDelta() -> String? {
        var sawType = false
        var text: String?
        guard enterObject() else { return nil }
        var more = true
        while more {
            switch readKey() {
            case .type? where !sawType:
                guard readExactString("text_delta") else { return nil }
                sawType = true
            case .text? where text == nil:
                guard let value = JSONValue.readString(in: bytes, at: &position) else { return nil }
                text = value
            default:
                return nil
            }
            guard let next = nextMember() else { return nil }
            more = next
        }
        guard sawType else { return nil }
        return text
    }

    private mutating func skipWhitespace() {
        while position < bytes.count {
            switch bytes[position] {
            case 0x20, 0x09, 0x0A, 0x0D: position += 1
            default: return
            }
        }
    }

    /// `{` followed by a member (an empty object is not this shape).
    private mutating func enterObject() -> Bool {
        skipWhitespace()
        guard position < bytes.count, bytes[position] == UInt8(ascii: "{") else { return false }
        position += 1
        return true
    }

    /// After a member: true after `,`, false after `}`, nil for anything else.
    private mutating func nextMember() -> Bool? {
        skipWhitespace()
        guard position < bytes.count else { return nil }
        let byte = bytes[position]
        position += 1
        switch byte {
        case UInt8(ascii: ","): return true
        case UInt8(ascii: "}"): return false
        default: return nil
        }
    }

    /// A member's key and its `:`; nil for a key not of this shape (or spelled with escapes).
    private mutating func readKey() -> Key? {
        skipWhitespace()
        let key: Key
        if consume(#""type""#) {
            key = .type
        } else if consume(#""index""#) {
            key = .index
        } else if consume(#""delta""#) {
            key = .delta
        } else if consume(#""text""#) {
            key = .text
        } else {
            return nil
        }
        skipWhitespace()
        guard consume(":") else { return nil }
        skipWhitespace()
        return key
    }

    /// The string `"<literal>"` exactly, with no escapes.
    private mutating func readExactString(_ literal: StaticString) -> Bool {
        guard consume("\"") else { return false }
        guard consume(literal) else { return false }
        return consume("\"")
    }

    /// A non-negative integer in plain digits (no sign, fraction or exponent, no leading zero).
    private mutating func readIndex() -> Int? {
        let start = position
        var value = 0
        while position < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[position]) {
            guard position - start < Self.maxIndexDigits else { return nil }
            value = value * 10 + Int(bytes[position] - UInt8(ascii: "0"))
            position += 1
        }
        let digits = position - start
        guard digits > 0, digits == 1 || bytes[start] != UInt8(ascii: "0") else { return nil }
        return value
    }

    private mutating func consume(_ literal: StaticString) -> Bool {
        let count = literal.utf8CodeUnitCount
        guard bytes.count - position >= count else { return false }
        for offset in 0..<count where bytes[position + offset] != literal.utf8Start[offset] {
            return false
        }
        position += count
        return true
    }
}

/// Field access that reports which event and field were wrong.
private struct Payload {
    let event: String
    let root: [String: JSONValue]

    func failure(_ reason: String) -> AnthropicDecodingError {
        AnthropicDecodingError(event: event, reason: reason)
    }

    func object(_ key: String) throws(AnthropicDecodingError) -> [String: JSONValue] {
        guard let object = root[key]?.objectValue else { throw failure("'\(key)' is missing or not an object") }
        return object
    }

    func string(_ key: String, in object: [String: JSONValue]) throws(AnthropicDecodingError) -> String {
        guard let value = object[key]?.stringValue else { throw failure("'\(key)' is missing or not a string") }
        return value
    }

    /// Absent and `null` are both nil; any other non-string is malformed.
    func optionalString(_ key: String, in object: [String: JSONValue]) throws(AnthropicDecodingError) -> String? {
        switch object[key] {
        case nil, .null?: return nil
        case .string(let value)?: return value
        default: throw failure("'\(key)' is not a string")
        }
    }

    func index() throws(AnthropicDecodingError) -> Int {
        guard let index = root["index"]?.intValue, index >= 0 else {
            throw failure("'index' is missing or not a non-negative integer")
        }
        return index
    }

    func usage(_ value: JSONValue?) throws(AnthropicDecodingError) -> AnthropicUsage {
        guard let value, value != .null else { return AnthropicUsage() }
        guard let object = value.objectValue else { throw failure("'usage' is not an object") }
        func count(_ key: String) throws(AnthropicDecodingError) -> Int? {
            switch object[key] {
            case nil, .null?: return nil
            case let number?:
                guard let count = number.intValue, count >= 0 else { throw failure("'usage.\(key)' is not a count") }
                return count
            }
        }
        return AnthropicUsage(
            inputTokens: try count("input_tokens"),
            outputTokens: try count("output_tokens"),
            cacheCreationInputTokens: try count("cache_creation_input_tokens"),
            cacheReadInputTokens: try count("cache_read_input_tokens"),
            other: object.filter { !AnthropicUsage.countFields.contains($0.key) && $0.value != .null }
        )
    }

    func contentBlock(_ block: [String: JSONValue]) throws(AnthropicDecodingError) -> AnthropicContentBlock {
        switch try string("type", in: block) {
        case "text": .text(try optionalString("text", in: block) ?? "")
        case "tool_use": .toolUse(id: try string("id", in: block), name: try string("name", in: block))
        case "thinking": .thinking(try optionalString("thinking", in: block) ?? "")
        case "redacted_thinking": .redactedThinking(data: try string("data", in: block))
        case let type: .other(type: type, raw: .object(block))
        }
    }

    func delta(_ delta: [String: JSONValue]) throws(AnthropicDecodingError) -> AnthropicDelta {
        switch try string("type", in: delta) {
        case "text_delta": .text(try string("text", in: delta))
        case "input_json_delta": .inputJSON(try string("partial_json", in: delta))
        case "thinking_delta": .thinking(try string("thinking", in: delta))
        case "signature_delta": .signature(try string("signature", in: delta))
        case "citations_delta":
            if let citation = delta["citation"], citation != .null {
                .citation(citation)
            } else {
                throw failure("'citation' is missing")
            }
        case let type: .other(type: type, raw: .object(delta))
        }
    }
}
