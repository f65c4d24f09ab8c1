import SluiceWire

/// An error answered with the API's error body: `{"type":"error","error":{"type","message"},"request_id"}`.
struct SimulatorFailure: Error {
    var status: Int
    var type: String
    var message: String
    var headers: [(String, String)] = []

    static func invalidRequest(_ message: String) -> SimulatorFailure {
        SimulatorFailure(status: 400, type: "invalid_request_error", message: message)
    }

    /// The error type the API uses with `status`.
    static func errorType(forStatus status: Int) -> String {
        switch status {
        case 400: "invalid_request_error"
        case 401: "authentication_error"
        case 402: "billing_error"
        case 403: "permission_error"
        case 404: "not_found_error"
        case 413: "request_too_large"
        case 429: "rate_limit_error"
        case 504: "timeout_error"
        case 529: "overloaded_error"
        case 500...: "api_error"
        default: "invalid_request_error"
        }
    }

    static func defaultMessage(forStatus status: Int) -> String {
        switch status {
        case 401: "invalid x-api-key"
        case 403: "Your API key does not have permission to use the specified resource."
        case 404: "The requested resource could not be found."
        case 413: "Request exceeds the maximum allowed number of bytes."
        case 429: "Number of request tokens has exceeded your per-minute rate limit (simulated)"
        case 504: "Request timed out"
        case 529: "Overloaded"
        case 500...: "Internal server error"
        default: "Invalid request (simulated)"
        }
    }
}

/// A validated `POST /v1/messages` body.
struct MessagesRequest {
    var model: String
    var maxTokens: Int
    var system: JSONValue
    var tools: [JSONValue]
    var stream: Bool
    var stopSequences: [String]
    /// The messages without a trailing assistant message.
    var conversation: [JSONValue]
    /// The trailing assistant message's text, when the request ends with one.
    var prefill: String?

    static func parse(_ body: [UInt8]) throws(SimulatorFailure) -> MessagesRequest {
        let json: JSONValue
        do throws(JSONParseError) {
            json = try JSONValue(parsing: body)
        } catch {
            throw .invalidRequest("There was an error parsing the body of your request as JSON: \(error.description)")
        }
        guard let root = json.objectValue else { throw .invalidRequest("The request body must be a JSON object") }

        guard let modelValue = root["model"], modelValue != .null else { throw .invalidRequest("model: Field required") }
        guard let model = modelValue.stringValue, !model.isEmpty else { throw .invalidRequest("model: Input should be a valid string") }

        guard let maxTokensValue = root["max_tokens"], maxTokensValue != .null else {
            throw .invalidRequest("max_tokens: Field required")
        }
        guard let maxTokens = maxTokensValue.intValue else { throw .invalidRequest("max_tokens: Input should be a valid integer") }
        guard maxTokens >= 1 else { throw .invalidRequest("max_tokens: Input should be greater than or equal to 1") }

        guard let messagesValue = root["messages"], messagesValue != .null else {
            throw .invalidRequest("messages: Field required")
        }
        guard let messages = messagesValue.arrayValue else { throw .invalidRequest("messages: Input should be a valid list") }
        guard !messages.isEmpty else { throw .invalidRequest("messages: at least one message is required") }
        for (index, message) in messages.enumerated() {
            guard let object = message.objectValue else { throw .invalidRequest("messages.\(index): Input should be a valid dictionary") }
            guard let role = object["role"]?.stringValue, role == "user" || role == "assistant" else {
                throw .invalidRequest("messages.\(index).role: Input should be 'user' or 'assistant'")
            }
            switch object["content"] {
            case .string?: break
            case .array(let blocks)?:
                for (blockIndex, block) in blocks.enumerated() where block["type"]?.stringValue == nil {
                    throw .invalidRequest("messages.\(index).content.\(blockIndex).type: Field required")
                }
            case nil, .null?: throw .invalidRequest("messages.\(index).content: Field required")
            default: throw .invalidRequest("messages.\(index).content: Input should be a valid string or list of content blocks")
            }
        }

        let system = root["system"] ?? .null
        switch system {
        case .null, .string: break
        case .array(let blocks):
            for (index, block) in blocks.enumerated() where block["type"]?.stringValue != "text" || block["text"]?.stringValue == nil {
                throw .invalidRequest("system.\(index): Input should be a text block")
            }
        default: throw .invalidRequest("system: Input should be a valid string or list of text blocks")
        }

        var tools: [JSONValue] = []
        if let toolsValue = root["tools"], toolsValue != .null {
            guard let array = toolsValue.arrayValue else { throw .invalidRequest("tools: Input should be a valid list") }
            for (index, tool) in array.enumerated() where tool["name"]?.stringValue == nil {
                throw .invalidRequest("tools.\(index).name: Field required")
            }
            tools = array
        }

        var stream = false
        if let streamValue = root["stream"], streamValue != .null {
            guard let flag = streamValue.boolValue else { throw .invalidRequest("stream: Input should be a valid boolean") }
            stream = flag
        }

        var stopSequences: [String] = []
        if let value = root["stop_sequences"], value != .null {
            guard let array = value.arrayValue, array.allSatisfy({ $0.stringValue != nil }) else {
                throw .invalidRequest("stop_sequences: Input should be a valid list of strings")
            }
            stopSequences = array.compactMap(\.stringValue)
        }
        if let temperature = root["temperature"], temperature != .null {
            guard let value = temperature.doubleValue, (0...1).contains(value) else {
                throw .invalidRequest("temperature: Input should be a number between 0 and 1")
            }
        }

        var conversation = messages
        var prefill: String?
        if let last = messages.last, last["role"]?.stringValue == "assistant" {
            conversation.removeLast()
            prefill = Self.text(of: last["content"] ?? .null)
        }
        return MessagesRequest(
            model: model, maxTokens: maxTokens, system: system, tools: tools, stream: stream,
            stopSequences: stopSequences, conversation: conversation, prefill: prefill
        )
    }

    /// A message content's text: the string, or its text blocks joined.
    static func text(of content: JSONValue) -> String {
        switch content {
        case .string(let text): text
        case .array(let blocks): blocks.compactMap { $0["type"]?.stringValue == "text" ? $0["text"]?.stringValue : nil }.joined()
        default: ""
        }
    }
}

/// The response the simulator sends for one request, fully decided before the first byte goes out.
struct SimulatedMessage {
    struct TextDelta {
        var text: String
        /// How many tokens the delta carries (paces the stream).
        var tokens: Int
    }

    enum Block {
        case text([TextDelta])
        case toolUse(id: String, name: String, input: JSONValue, fragments: [String])
    }

    enum PrefillOutcome: String {
        /// No trailing assistant message (or an empty one).
        case none
        /// The prefill was a prefix of what the simulator would say: only the rest is sent.
        case continued
        /// The prefill was not such a prefix: the whole text is sent.
        case mismatch
    }

    var id: String
    var model: String
    var blocks: [Block]
    var stopReason: String
    var stopSequence: String?
    var inputTokens: Int
    var outputTokens: Int
    var prefill: PrefillOutcome

    /// Decides the response. The text depends only on the scenario and the conversation without its trailing
    /// assistant message, so that a prefill of any prefix yields exactly the rest.
    init(request: MessagesRequest, scenario: SimulationScenario) {
        let conversationBytes = JSONValue.object(["system": request.system, "messages": .array(request.conversation)]).serialized()
        let textSeed = SimulatorHash.combine(SimulatorHash.hash(conversationBytes), scenario.seed)
        var random = SimulatorRandom(seed: textSeed)

        var tokens: [String]
        var toolCalls: [SimulationScenario.ToolCall] = []
        var stopReason = "end_turn"
        let results = Self.toolResults(in: request.conversation)
        if !results.isEmpty {
            tokens = results.flatMap { SimulatorText.tokenize($0) } + Self.answer(scenario, random: &random)
        } else if !request.tools.isEmpty, !scenario.toolCalls.isEmpty {
            toolCalls = scenario.toolCalls
            tokens = scenario.toolPreamble ? Self.preamble(for: toolCalls, random: &random) : []
            stopReason = "tool_use"
        } else {
            tokens = Self.answer(scenario, random: &random)
        }

        // Prefill: continue after it when it is a prefix (compared as UTF-8, so any scalar split works).
        prefill = .none
        var prefillBytes = 0
        if let text = request.prefill, !text.isEmpty {
            if tokens.joined().utf8.starts(with: text.utf8) {
                prefillBytes = text.utf8.count
                tokens = Self.dropPrefix(of: tokens, bytes: prefillBytes)
                prefill = .continued
            } else {
                prefill = .mismatch
            }
        }

        // Stop sequences, then max_tokens, cut the remaining text; tool calls only follow a complete text.
        stopSequence = nil
        let remaining = Array(tokens.joined().utf8)
        var cut: Int?
        for sequence in request.stopSequences where !sequence.isEmpty {
            if let index = Self.firstIndex(of: Array(sequence.utf8), in: remaining), index < (cut ?? .max) {
                cut = index
                stopSequence = sequence
            }
        }
        if let cut {
            tokens = Self.prefix(of: tokens, bytes: cut)
            stopReason = "stop_sequence"
            toolCalls = []
        }
        if tokens.count > request.maxTokens {
            tokens.removeSubrange(request.maxTokens...)
            stopReason = "max_tokens"
            stopSequence = nil
            toolCalls = []
        }
        var outputTokens = tokens.count

        var blocks: [Block] = []
        if !tokens.isEmpty {
            var chunking = SimulatorRandom(seed: SimulatorHash.combine(textSeed, 0xC4_0000 &+ UInt64(prefillBytes)))
            var deltas: [TextDelta] = []
            var index = 0
            while index < tokens.count {
                let count = min(tokens.count - index, [1, 1, 1, 2, 2, 3][chunking.below(6)])
                deltas.append(TextDelta(text: tokens[index..<index + count].joined(), tokens: count))
                index += count
            }
            blocks.append(.text(deltas))
        }
        for (index, call) in toolCalls.enumerated() {
            let json = call.input.serializedString
            let cost = 8 + (json.utf8.count + 3) / 4
            guard outputTokens + cost <= request.maxTokens else {
                stopReason = "max_tokens"
                break
            }
            outputTokens += cost
            let toolSeed = SimulatorHash.combine(textSeed, 0x7001 &+ UInt64(index))
            var splitting = SimulatorRandom(seed: toolSeed ^ 0x5EED)
            var fragments = [""]
            var scalars = json.unicodeScalars[...]
            while !scalars.isEmpty {
                let count = min(scalars.count, splitting.inRange(1...16))
                fragments.append(String(String.UnicodeScalarView(scalars.prefix(count))))
                scalars = scalars.dropFirst(count)
            }
            blocks.append(
                .toolUse(
                    id: SimulatorText.identifier(prefix: "toolu_", seed: toolSeed), name: call.name, input: call.input, fragments: fragments
                ))
        }
        if stopReason == "tool_use", !blocks.contains(where: { if case .toolUse = $0 { true } else { false } }) {
            stopReason = "max_tokens"
        }

        self.id = SimulatorText.identifier(prefix: "msg_", seed: SimulatorHash.combine(textSeed, 0x4D53_47))
        self.model = request.model
        self.blocks = blocks
        self.stopReason = stopReason
        self.outputTokens = outputTokens
        var inputBytes = conversationBytes.count + JSONValue.array(request.tools).serialized().count
        inputBytes += request.prefill?.utf8.count ?? 0
        self.inputTokens = max(1, inputBytes / 4)
    }

    /// The scenario's scripted text, or generated prose.
    private static func answer(_ scenario: SimulationScenario, random: inout SimulatorRandom) -> [String] {
        if let text = scenario.text { return SimulatorText.tokenize(text) }
        return SimulatorText.prose(tokens: scenario.outputTokens, random: &random)
    }

    /// The text quoting each `tool_result` of the last user message (content verbatim, at most 200 characters).
    private static func toolResults(in conversation: [JSONValue]) -> [String] {
        guard let last = conversation.last, last["role"]?.stringValue == "user", let blocks = last["content"]?.arrayValue else { return [] }
        let results = blocks.filter { $0["type"]?.stringValue == "tool_result" }
        guard !results.isEmpty else { return [] }
        var names: [String: String] = [:]
        for message in conversation where message["role"]?.stringValue == "assistant" {
            for block in message["content"]?.arrayValue ?? [] where block["type"]?.stringValue == "tool_use" {
                if let id = block["id"]?.stringValue, let name = block["name"]?.stringValue { names[id] = name }
            }
        }
        return results.map { result in
            let id = result["tool_use_id"]?.stringValue ?? ""
            let name = names[id] ?? "tool"
            var content = MessagesRequest.text(of: result["content"] ?? .null)
            if content.count > 200 { content = String(content.prefix(200)) + "…" }
            let verb = result["is_error"]?.boolValue == true ? "failed with" : "returned"
            return "The `\(name)` tool (\(id)) \(verb): \(content)\n\n"
        }
    }

    private static func preamble(for calls: [SimulationScenario.ToolCall], random: inout SimulatorRandom) -> [String] {
        let names = calls.map { "`\($0.name)`" }
        let list = names.count == 1 ? names[0] : names.dropLast().joined(separator: ", ") + " and " + names.last!
        let noun = names.count == 1 ? "tool" : "tools"
        let sentence = random.pick([
            "I'll use the \(list) \(noun) to look into this.",
            "Let me check that with the \(list) \(noun).",
            "I'll call the \(list) \(noun) first.",
        ])
        return SimulatorText.tokenize(sentence)
    }

    /// `tokens` without their first `bytes` UTF-8 bytes (a scalar boundary).
    static func dropPrefix(of tokens: [String], bytes: Int) -> [String] {
        var skipped = 0
        for (index, token) in tokens.enumerated() {
            let size = token.utf8.count
            if skipped + size > bytes {
                let rest = String(decoding: token.utf8.dropFirst(bytes - skipped), as: UTF8.self)
                return [rest] + tokens[(index + 1)...]
            }
            skipped += size
        }
        return []
    }

    /// The first `bytes` UTF-8 bytes of `tokens` (a scalar boundary).
    static func prefix(of tokens: [String], bytes: Int) -> [String] {
        var kept: [String] = []
        var taken = 0
        for token in tokens {
            let size = token.utf8.count
            if taken + size > bytes {
                if bytes > taken { kept.append(String(decoding: token.utf8.prefix(bytes - taken), as: UTF8.self)) }
                break
            }
            kept.append(token)
            taken += size
        }
        return kept
    }

    static func firstIndex(of needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard !needle.isEmpty, needle.count <= haystack.count else { return nil }
        for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
            if haystack[start..<start + needle.count].elementsEqual(needle) { return start }
        }
        return nil
    }

    // MARK: JSON

    private var usageJSON: OrderedJSON {
        [
            "input_tokens": .integer(inputTokens),
            "cache_creation_input_tokens": .integer(0),
            "cache_read_input_tokens": .integer(0),
            "output_tokens": .integer(outputTokens),
        ]
    }

    /// The non-streaming response body: the whole Message.
    var messageJSON: OrderedJSON {
        let content = blocks.map { block -> OrderedJSON in
            switch block {
            case .text(let deltas):
                ["type": "text", "text": .string(deltas.map(\.text).joined())]
            case .toolUse(let id, let name, let input, _):
                ["type": "tool_use", "id": .string(id), "name": .string(name), "input": .value(input)]
            }
        }
        return [
            "id": .string(id),
            "type": "message",
            "role": "assistant",
            "model": .string(model),
            "content": .array(content),
            "stop_reason": .string(stopReason),
            "stop_sequence": stopSequence.map(OrderedJSON.string) ?? .value(.null),
            "usage": usageJSON,
        ]
    }

    struct Event {
        var name: String
        var data: String
        /// A text delta, which `stamp_deltas` prefixes with its send time.
        var isTextDelta = false
        /// How long to wait before sending it.
        var delay: Duration = .zero
    }

    /// The stream's events, `message_start` to `message_stop`, with the first ping and the pacing.
    func events(tokenInterval: Duration, firstTokenDelay: Duration) -> [Event] {
        var events: [Event] = []
        let start: OrderedJSON = [
            "id": .string(id),
            "type": "message",
            "role": "assistant",
            "model": .string(model),
            "content": [],
            "stop_reason": nil,
            "stop_sequence": nil,
            "usage": [
                "input_tokens": .integer(inputTokens),
                "cache_creation_input_tokens": .integer(0),
                "cache_read_input_tokens": .integer(0),
                "output_tokens": .integer(1),
            ],
        ]
        func append(_ name: String, _ data: OrderedJSON, isTextDelta: Bool = false, delay: Duration = .zero) {
            events.append(Event(name: name, data: data.serializedString, isTextDelta: isTextDelta, delay: delay))
        }
        append("message_start", ["type": "message_start", "message": start])
        append("ping", ["type": "ping"])
        var firstDelta = true
        for (index, block) in blocks.enumerated() {
            let contentBlock: OrderedJSON =
                switch block {
                case .text: ["type": "text", "text": ""]
                case .toolUse(let id, let name, _, _): ["type": "tool_use", "id": .string(id), "name": .string(name), "input": .object([])]
                }
            append(
                "content_block_start", ["type": "content_block_start", "index": .integer(index), "content_block": contentBlock],
                delay: index == 0 ? firstTokenDelay : .zero)
            func delta(_ delta: OrderedJSON, tokens: Int, isText: Bool) {
                append(
                    "content_block_delta", ["type": "content_block_delta", "index": .integer(index), "delta": delta],
                    isTextDelta: isText, delay: firstDelta ? .zero : tokenInterval * tokens)
                firstDelta = false
            }
            switch block {
            case .text(let deltas):
                for item in deltas {
                    delta(["type": "text_delta", "text": .string(item.text)], tokens: item.tokens, isText: true)
                }
            case .toolUse(_, _, _, let fragments):
                for fragment in fragments {
                    delta(["type": "input_json_delta", "partial_json": .string(fragment)], tokens: 1, isText: false)
                }
            }
            append("content_block_stop", ["type": "content_block_stop", "index": .integer(index)])
        }
        append(
            "message_delta",
            [
                "type": "message_delta",
                "delta": ["stop_reason": .string(stopReason), "stop_sequence": stopSequence.map(OrderedJSON.string) ?? .value(.null)],
                "usage": ["output_tokens": .integer(outputTokens)],
            ])
        append("message_stop", ["type": "message_stop"])
        return events
    }

    /// Total generation time, for non-streaming responses.
    func generationTime(tokenInterval: Duration, firstTokenDelay: Duration) -> Duration {
        firstTokenDelay + tokenInterval * max(0, outputTokens - 1)
    }
}
