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
    /// `thinking.budget_tokens` when thinking is enabled.
    var thinkingBudget: Int?
    /// The messages without a trailing assistant message.
    var conversation: [JSONValue]
    /// The trailing assistant message's text, when the request ends with one.
    var prefill: String?
    /// The trailing assistant message begins with a thinking block: the one prefill the API takes with thinking on.
    var prefillStartsWithThinking = false
    /// Tools, system and messages up to the last block marked `cache_control`, serialized: what prompt caching
    /// stores (nil without a marker).
    var cachedPrefix: [UInt8]?

    /// `requiresMaxTokens` is false for `count_tokens`, whose body has no `max_tokens` (then unbounded).
    static func parse(_ body: [UInt8], requiresMaxTokens: Bool = true) throws(SimulatorFailure) -> MessagesRequest {
        let json: JSONValue
        do throws(JSONParseError) {
            json = try JSONValue(parsing: body)
        } catch {
            throw .invalidRequest("There was an error parsing the body of your request as JSON: \(error.description)")
        }
        guard let root = json.objectValue else { throw .invalidRequest("The request body must be a JSON object") }

        guard let modelValue = root["model"], modelValue != .null else { throw .invalidRequest("model: Field required") }
        guard let model = modelValue.stringValue, !model.isEmpty else { throw .invalidRequest("model: Input should be a valid string") }

        var maxTokens = Int.max
        if let maxTokensValue = root["max_tokens"], maxTokensValue != .null {
            guard let value = maxTokensValue.intValue else { throw .invalidRequest("max_tokens: Input should be a valid integer") }
            guard value >= 1 else { throw .invalidRequest("max_tokens: Input should be greater than or equal to 1") }
            maxTokens = value
        } else if requiresMaxTokens {
            throw .invalidRequest("max_tokens: Field required")
        }

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

        var thinkingBudget: Int?
        if let thinking = root["thinking"], thinking != .null {
            guard let type = thinking["type"]?.stringValue else { throw .invalidRequest("thinking.type: Field required") }
            switch type {
            case "enabled":
                guard let budget = thinking["budget_tokens"]?.intValue else {
                    throw .invalidRequest("thinking.enabled.budget_tokens: Field required")
                }
                guard budget >= 1024 else {
                    throw .invalidRequest("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
                }
                guard budget < maxTokens else { throw .invalidRequest("`max_tokens` must be greater than `thinking.budget_tokens`") }
                thinkingBudget = budget
            case "disabled": break
            default: throw .invalidRequest("thinking: Input tag '\(type)' does not match any of the expected tags: 'disabled', 'enabled'")
            }
        }

        var conversation = messages
        var prefill: String?
        var prefillStartsWithThinking = false
        if let last = messages.last, last["role"]?.stringValue == "assistant" {
            conversation.removeLast()
            prefill = Self.text(of: last["content"] ?? .null)
            let firstType = last["content"]?.arrayValue?.first?["type"]?.stringValue
            prefillStartsWithThinking = firstType == "thinking" || firstType == "redacted_thinking"
        }
        return MessagesRequest(
            model: model, maxTokens: maxTokens, system: system, tools: tools, stream: stream,
            stopSequences: stopSequences, thinkingBudget: thinkingBudget, conversation: conversation, prefill: prefill,
            prefillStartsWithThinking: prefillStartsWithThinking,
            cachedPrefix: Self.cachedPrefix(tools: tools, system: system, messages: conversation)
        )
    }

    /// The API caches in order tools, system, messages; a prefix ends at the last `cache_control` marker.
    static func cachedPrefix(tools: [JSONValue], system: JSONValue, messages: [JSONValue]) -> [UInt8]? {
        var segments: [JSONValue] = tools
        segments += system.arrayValue ?? []
        for message in messages {
            segments.append(["role": message["role"] ?? .null])
            segments += message["content"]?.arrayValue ?? []
        }
        guard let last = segments.lastIndex(where: { $0["cache_control"] != nil }) else { return nil }
        return JSONValue.array(Array(segments[...last])).serialized()
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
        case thinking([TextDelta], signature: String)
        /// `citations` go out as citations_delta before the text.
        case text([TextDelta], citations: [JSONValue])
        case toolUse(id: String, name: String, input: JSONValue, fragments: [String])
        /// An Anthropic-hosted tool's call (web search), its input streamed like a client tool's.
        case serverToolUse(id: String, name: String, input: JSONValue, fragments: [String])
        /// A hosted tool's result, sent whole in its content_block_start as the API does.
        case webSearchResult(toolUseID: String, content: JSONValue)
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
    var cacheCreationInputTokens = 0
    var cacheReadInputTokens = 0
    var webSearchRequests = 0
    var prefill: PrefillOutcome

    /// Decides the response. The text depends only on the scenario and the conversation without its trailing
    /// assistant message, so that a prefill of any prefix yields exactly the rest.
    /// `cacheRead`: the request's cached prefix (`MessagesRequest.cachedPrefix`) was written by an earlier request.
    init(request: MessagesRequest, scenario: SimulationScenario, cacheRead: Bool = false) {
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
        // Extended thinking comes first and counts towards max_tokens (its budget is below max_tokens).
        var blocks: [Block] = []
        var thinkingCount = 0
        if let budget = request.thinkingBudget, scenario.thinkingTokens > 0 {
            let thinkingSeed = SimulatorHash.combine(textSeed, 0x7417)
            var thinkingRandom = SimulatorRandom(seed: thinkingSeed)
            let thinking = SimulatorText.prose(tokens: min(scenario.thinkingTokens, budget), random: &thinkingRandom)
            thinkingCount = thinking.count
            blocks.append(
                .thinking(
                    Self.deltas(thinking, seed: thinkingSeed),
                    signature: SimulatorText.identifier(prefix: "Eq", seed: thinkingSeed ^ 0x5161) + "=="))
        }
        let textBudget = request.maxTokens - thinkingCount
        if tokens.count > textBudget {
            tokens.removeSubrange(textBudget...)
            stopReason = "max_tokens"
            stopSequence = nil
            toolCalls = []
        }
        var outputTokens = thinkingCount + tokens.count

        // A hosted web search runs before the answer, within the same message, and the answer cites its result.
        var citations = Self.documentCitations(in: request.conversation)
        if request.tools.contains(where: { $0["type"]?.stringValue?.hasPrefix("web_search_") == true }), results.isEmpty {
            let searchSeed = SimulatorHash.combine(textSeed, 0x5EA2C4)
            let searchID = SimulatorText.identifier(prefix: "srvtoolu_", seed: searchSeed)
            let query = MessagesRequest.text(of: request.conversation.last?["content"] ?? .null).split(separator: " ").prefix(8).joined(
                separator: " ")
            let input: JSONValue = ["query": .string(query)]
            let url = "https://example.com/search/\(SimulatorText.identifier(prefix: "r", seed: searchSeed ^ 1))"
            let title = "Result for \(query)"
            blocks.append(
                .serverToolUse(
                    id: searchID, name: "web_search", input: input, fragments: Self.fragments(of: input.serializedString, seed: searchSeed))
            )
            blocks.append(
                .webSearchResult(
                    toolUseID: searchID,
                    content: [
                        [
                            "type": "web_search_result", "url": .string(url), "title": .string(title),
                            "encrypted_content": .string(SimulatorText.identifier(prefix: "Eu", seed: searchSeed ^ 2)), "page_age": nil,
                        ]
                    ]))
            citations.append([
                "type": "web_search_result_location", "url": .string(url), "title": .string(title),
                "encrypted_index": .string(SimulatorText.identifier(prefix: "Eo", seed: searchSeed ^ 3)),
                "cited_text": .string(String(tokens.joined().prefix(60))),
            ])
            webSearchRequests = 1
        }
        if !tokens.isEmpty {
            blocks.append(
                .text(Self.deltas(tokens, seed: SimulatorHash.combine(textSeed, 0xC4_0000 &+ UInt64(prefillBytes))), citations: citations))
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
            blocks.append(
                .toolUse(
                    id: SimulatorText.identifier(prefix: "toolu_", seed: toolSeed), name: call.name, input: call.input,
                    fragments: Self.fragments(of: json, seed: toolSeed ^ 0x5EED)))
        }
        if stopReason == "tool_use", !blocks.contains(where: { if case .toolUse = $0 { true } else { false } }) {
            stopReason = "max_tokens"
        }

        self.id = SimulatorText.identifier(prefix: "msg_", seed: SimulatorHash.combine(textSeed, 0x4D53_47))
        self.model = request.model
        self.blocks = blocks
        self.stopReason = stopReason
        self.outputTokens = outputTokens
        let input = Self.inputTokens(request)
        if cacheRead { cacheReadInputTokens = input.cached } else { cacheCreationInputTokens = input.cached }
        self.inputTokens = input.uncached
    }

    /// The request's input tokens (about four bytes each): the prompt-cached prefix apart from the rest, which
    /// is the message's `input_tokens` and `count_tokens`' answer.
    static func inputTokens(_ request: MessagesRequest) -> (uncached: Int, cached: Int) {
        let conversationBytes = JSONValue.object(["system": request.system, "messages": .array(request.conversation)]).serialized()
        var inputBytes = conversationBytes.count + JSONValue.array(request.tools).serialized().count
        inputBytes += request.prefill?.utf8.count ?? 0
        // The prompt-cached prefix is counted apart from input_tokens: written on first use, read on a repeat.
        let cachedTokens = min((request.cachedPrefix?.count ?? 0) / 4, inputBytes / 4)
        return (max(1, inputBytes / 4 - cachedTokens), cachedTokens)
    }

    /// `json` in fragments of 1 to 16 scalars after an empty first one, as the API streams tool input: splits
    /// fall inside strings, between escapes and between the scalars of multi-scalar characters.
    private static func fragments(of json: String, seed: UInt64) -> [String] {
        var splitting = SimulatorRandom(seed: seed)
        var fragments = [""]
        var scalars = json.unicodeScalars[...]
        while !scalars.isEmpty {
            let count = min(scalars.count, splitting.inRange(1...16))
            fragments.append(String(String.UnicodeScalarView(scalars.prefix(count))))
            scalars = scalars.dropFirst(count)
        }
        return fragments
    }

    /// One citation per document with `citations.enabled` in the conversation, in the API's location type for
    /// its source: character ranges for plain text, block ranges for custom content, pages for PDFs.
    private static func documentCitations(in conversation: [JSONValue]) -> [JSONValue] {
        var citations: [JSONValue] = []
        var documentIndex = 0
        for message in conversation {
            for block in message["content"]?.arrayValue ?? [] where block["type"]?.stringValue == "document" {
                defer { documentIndex += 1 }
                guard block["citations"]?["enabled"]?.boolValue == true else { continue }
                let title = block["title"] ?? .null
                let source = block["source"] ?? .null
                switch source["type"]?.stringValue {
                case "text":
                    let text = source["data"]?.stringValue ?? ""
                    let cited = String(text.prefix(60))
                    citations.append([
                        "type": "char_location", "cited_text": .string(cited), "document_index": .integer(documentIndex),
                        "document_title": title, "start_char_index": 0, "end_char_index": .integer(cited.count),
                    ])
                case "content":
                    citations.append([
                        "type": "content_block_location",
                        "cited_text": .string(source["content"]?.arrayValue?.first?["text"]?.stringValue ?? ""),
                        "document_index": .integer(documentIndex), "document_title": title, "start_block_index": 0, "end_block_index": 1,
                    ])
                default:
                    citations.append([
                        "type": "page_location", "cited_text": "", "document_index": .integer(documentIndex), "document_title": title,
                        "start_page_number": 1, "end_page_number": 2,
                    ])
                }
            }
        }
        return citations
    }

    /// `tokens` in deltas of 1 to 3 tokens.
    private static func deltas(_ tokens: [String], seed: UInt64) -> [TextDelta] {
        var chunking = SimulatorRandom(seed: seed)
        var deltas: [TextDelta] = []
        var index = 0
        while index < tokens.count {
            let count = min(tokens.count - index, [1, 1, 1, 2, 2, 3][chunking.below(6)])
            deltas.append(TextDelta(text: tokens[index..<index + count].joined(), tokens: count))
            index += count
        }
        return deltas
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

    private func usageJSON(outputTokens: Int) -> OrderedJSON {
        var members: [(String, OrderedJSON)] = [
            ("input_tokens", .integer(inputTokens)),
            ("cache_creation_input_tokens", .integer(cacheCreationInputTokens)),
            ("cache_read_input_tokens", .integer(cacheReadInputTokens)),
            ("output_tokens", .integer(outputTokens)),
        ]
        if webSearchRequests > 0 { members.append(("server_tool_use", ["web_search_requests": .integer(webSearchRequests)])) }
        return .object(members)
    }

    /// The non-streaming response body: the whole Message.
    var messageJSON: OrderedJSON {
        let content = blocks.map { block -> OrderedJSON in
            switch block {
            case .thinking(let deltas, let signature):
                ["type": "thinking", "thinking": .string(deltas.map(\.text).joined()), "signature": .string(signature)]
            case .text(let deltas, let citations) where !citations.isEmpty:
                ["type": "text", "text": .string(deltas.map(\.text).joined()), "citations": .value(.array(citations))]
            case .text(let deltas, _):
                ["type": "text", "text": .string(deltas.map(\.text).joined())]
            case .toolUse(let id, let name, let input, _):
                ["type": "tool_use", "id": .string(id), "name": .string(name), "input": .value(input)]
            case .serverToolUse(let id, let name, let input, _):
                ["type": "server_tool_use", "id": .string(id), "name": .string(name), "input": .value(input)]
            case .webSearchResult(let toolUseID, let content):
                ["type": "web_search_tool_result", "tool_use_id": .string(toolUseID), "content": .value(content)]
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
            "usage": usageJSON(outputTokens: outputTokens),
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
            "usage": usageJSON(outputTokens: 1),
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
                case .thinking: ["type": "thinking", "thinking": "", "signature": ""]
                case .text: ["type": "text", "text": ""]
                case .toolUse(let id, let name, _, _): ["type": "tool_use", "id": .string(id), "name": .string(name), "input": .object([])]
                case .serverToolUse(let id, let name, _, _):
                    ["type": "server_tool_use", "id": .string(id), "name": .string(name), "input": .object([])]
                case .webSearchResult(let toolUseID, let content):
                    ["type": "web_search_tool_result", "tool_use_id": .string(toolUseID), "content": .value(content)]
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
            case .thinking(let deltas, let signature):
                for item in deltas {
                    delta(["type": "thinking_delta", "thinking": .string(item.text)], tokens: item.tokens, isText: false)
                }
                delta(["type": "signature_delta", "signature": .string(signature)], tokens: 0, isText: false)
            case .text(let deltas, let citations):
                for citation in citations {
                    delta(["type": "citations_delta", "citation": .value(citation)], tokens: 0, isText: false)
                }
                for item in deltas {
                    delta(["type": "text_delta", "text": .string(item.text)], tokens: item.tokens, isText: true)
                }
            case .toolUse(_, _, _, let fragments), .serverToolUse(_, _, _, let fragments):
                for fragment in fragments {
                    delta(["type": "input_json_delta", "partial_json": .string(fragment)], tokens: 1, isText: false)
                }
            case .webSearchResult:
                break
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
