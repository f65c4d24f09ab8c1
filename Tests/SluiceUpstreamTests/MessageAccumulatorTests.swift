import SluiceUpstream
import SluiceWire
import Testing

@Suite struct MessageAccumulatorTests {
    static func accumulate(_ events: [AnthropicEvent]) -> MessageAccumulator {
        var accumulator = MessageAccumulator()
        for event in events { accumulator.apply(event) }
        return accumulator
    }

    /// What the Python SDK's `final_message().model_dump()` gives for the tool-use fixture, less its `None`
    /// fields (`citations`, `server_tool_use`, `cache_creation`, …).
    static let toolUseMessageJSON =
        #"{"content":[{"text":"Okay, let me check the weather in São Paulo for you ☀️ — one moment.","type":"text"},{"id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","input":{"days":3,"detail":true,"location":"São Paulo, BR","unit":"celsius"},"name":"get_weather","type":"tool_use"}],"id":"msg_01XFDUDYJgAACzvnptvVoYEL","model":"claude-sonnet-4-5-20250929","role":"assistant","stop_reason":"tool_use","stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":472,"output_tokens":89,"service_tier":"standard"}}"#

    @Test func rebuildsTheRecordedToolUseMessage() throws {
        let accumulator = Self.accumulate(try AnthropicFixtures.decodeAll(AnthropicFixtures.toolUseStream))
        #expect(accumulator.isComplete)
        #expect(accumulator.jsonValue.serializedString == Self.toolUseMessageJSON)

        let message = accumulator.message()
        #expect(
            message.content == [
                .text("Okay, let me check the weather in São Paulo for you ☀️ — one moment.", citations: []),
                .toolUse(
                    id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6", name: "get_weather",
                    input: .parsed([
                        "location": "São Paulo, BR", "unit": "celsius", "days": 3, "detail": true,
                    ])),
            ])
        #expect(
            message.usage
                == AnthropicUsage(
                    inputTokens: 472, outputTokens: 89, cacheCreationInputTokens: 0, cacheReadInputTokens: 0,
                    other: ["service_tier": "standard"]))
        #expect(message.stopReason == "tool_use")
    }

    @Test func everySplitPointRebuildsTheSameMessage() throws {
        let bytes = Array(AnthropicFixtures.toolUseStream.utf8)
        for split in stride(from: 0, through: bytes.count, by: 1) {
            let events = try AnthropicFixtures.decodeAll([Array(bytes[..<split]), Array(bytes[split...])])
            let json = Self.accumulate(events).jsonValue.serializedString
            #expect(json == Self.toolUseMessageJSON, "split at \(split)")
            if json != Self.toolUseMessageJSON { return }
        }
    }

    @Test func partialMessageMidStream() {
        let events = AnthropicFixtures.toolUseEvents
        let accumulator = Self.accumulate(Array(events.prefix(10)))
        #expect(!accumulator.isComplete)
        let message = accumulator.message()
        #expect(message.stopReason == nil)
        #expect(
            message.content.last
                == .toolUse(
                    id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6", name: "get_weather", input: .incomplete(json: #"{"location": "São Pa"#)
                ))
        // Not yet parsed, so rendered as an empty input.
        #expect(message.jsonValue["content"]?.arrayValue?.last?["input"] == [:])
        #expect(
            message.jsonValue["usage"] == [
                "input_tokens": 472, "output_tokens": 2, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                "service_tier": "standard",
            ])
    }

    @Test func invalidToolJSONIsRecordedOnTheBlockAndTheStreamGoesOn() {
        let accumulator = Self.accumulate([
            .messageStart(id: "m", model: "x", role: "assistant", usage: AnthropicUsage(inputTokens: 5)),
            .contentBlockStart(index: 0, block: .toolUse(id: "t1", name: "broken")),
            .contentBlockDelta(index: 0, delta: .inputJSON(#"{"a": tru"#)),
            .contentBlockStop(index: 0),
            .contentBlockStart(index: 1, block: .text("")),
            .contentBlockDelta(index: 1, delta: .text("still here")),
            .contentBlockStop(index: 1),
            .messageDelta(stopReason: "end_turn", stopSequence: nil, usage: AnthropicUsage(outputTokens: 7)),
            .messageStop,
        ])
        #expect(accumulator.isComplete)
        let content = accumulator.message().content
        guard case .toolUse("t1", "broken", .invalid(let json, let error)) = content[0] else {
            Issue.record("expected an invalid tool input, got \(content[0])")
            return
        }
        #expect(json == #"{"a": tru"#)
        #expect(error.contains("invalid JSON"))
        #expect(content[1] == .text("still here", citations: []))
        #expect(accumulator.jsonValue["content"]?.arrayValue?.first?["input"] == [:])
    }

    @Test func emptyToolInputIsAnEmptyObject() {
        let accumulator = Self.accumulate([
            .contentBlockStart(index: 0, block: .toolUse(id: "t", name: "no_params")),
            .contentBlockDelta(index: 0, delta: .inputJSON("")),
            .contentBlockStop(index: 0),
        ])
        #expect(accumulator.message().content == [.toolUse(id: "t", name: "no_params", input: .parsed([:]))])
    }

    @Test func toolInputIsParsedOnceAtStop() {
        let accumulator = Self.accumulate([
            .contentBlockStart(index: 0, block: .toolUse(id: "t", name: "n")),
            .contentBlockDelta(index: 0, delta: .inputJSON(#"{"a":1}"#)),
            .contentBlockStop(index: 0),
            .contentBlockDelta(index: 0, delta: .inputJSON("garbage")),
            .contentBlockStop(index: 0),
        ])
        #expect(accumulator.message().content == [.toolUse(id: "t", name: "n", input: .parsed(["a": 1]))])
    }

    @Test func rebuildsThinkingCitationsAndUnknownBlocks() throws {
        let accumulator = Self.accumulate(try AnthropicFixtures.decodeAll(AnthropicFixtures.thinkingStream))
        #expect(accumulator.isComplete)
        let message = accumulator.message()
        #expect(
            message.content == [
                .thinking("The user wants a number.", signature: "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"),
                .redactedThinking(data: "EmwKAhgBEgy3va3pzix/LafPsn4a"),
                .text(
                    "The answer is 42.",
                    citations: [
                        [
                            "type": "char_location", "cited_text": "42", "document_index": 0, "document_title": "Guide",
                            "start_char_index": 10, "end_char_index": 12,
                        ]
                    ]),
                .other(["type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": [:]]),
            ])
        // message_delta usage is cumulative: present fields replace, absent ones keep message_start's.
        #expect(message.usage == AnthropicUsage(inputTokens: 1200, outputTokens: 120, cacheReadInputTokens: 64))
        #expect(
            accumulator.jsonValue.serializedString
                == #"{"content":[{"signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3h","thinking":"The user wants a number.","type":"thinking"},{"data":"EmwKAhgBEgy3va3pzix/LafPsn4a","type":"redacted_thinking"},{"citations":[{"cited_text":"42","document_index":0,"document_title":"Guide","end_char_index":12,"start_char_index":10,"type":"char_location"}],"text":"The answer is 42.","type":"text"},{"id":"srvtoolu_1","input":{},"name":"web_search","type":"server_tool_use"}],"id":"msg_02","model":"claude-opus-4-1","role":"assistant","stop_reason":"end_turn","stop_sequence":null,"type":"message","usage":{"cache_read_input_tokens":64,"input_tokens":1200,"output_tokens":120}}"#
        )
    }

    @Test func blocksComeOutInIndexOrder() {
        let accumulator = Self.accumulate([
            .contentBlockStart(index: 1, block: .text("b")),
            .contentBlockStart(index: 0, block: .text("a")),
            .contentBlockDelta(index: 1, delta: .text("2")),
            .contentBlockDelta(index: 0, delta: .text("1")),
        ])
        #expect(accumulator.message().content == [.text("a1", citations: []), .text("b2", citations: [])])
    }

    @Test func mismatchedOrOrphanDeltasAreIgnored() {
        let accumulator = Self.accumulate([
            .contentBlockDelta(index: 0, delta: .text("before start")),
            .contentBlockStart(index: 0, block: .text("")),
            .contentBlockDelta(index: 0, delta: .inputJSON("{}")),
            .contentBlockDelta(index: 0, delta: .thinking("no")),
            .contentBlockDelta(index: 0, delta: .signature("no")),
            .contentBlockDelta(index: 0, delta: .other(type: "new", raw: [:])),
            .contentBlockDelta(index: 5, delta: .text("nowhere")),
            .contentBlockStop(index: 9),
            .contentBlockDelta(index: 0, delta: .text("ok")),
            .ping,
            .unknown(event: "whatever"),
            .error(type: "overloaded_error", message: "Overloaded", requestID: nil),
        ])
        #expect(accumulator.message().content == [.text("ok", citations: [])])
        #expect(!accumulator.isComplete)
    }

    @Test(.timeLimit(.minutes(1)))
    func longStreamsAccumulateInLinearTime() {
        var accumulator = MessageAccumulator()
        accumulator.apply(.contentBlockStart(index: 0, block: .text("")))
        accumulator.apply(.contentBlockStart(index: 1, block: .toolUse(id: "t", name: "n")))
        accumulator.apply(.contentBlockDelta(index: 1, delta: .inputJSON("[")))
        for i in 0..<200_000 {
            accumulator.apply(.contentBlockDelta(index: 0, delta: .text("token ")))
            accumulator.apply(.contentBlockDelta(index: 1, delta: .inputJSON(i == 0 ? "0" : ",0")))
        }
        accumulator.apply(.contentBlockDelta(index: 1, delta: .inputJSON("]")))
        accumulator.apply(.contentBlockStop(index: 1))
        let content = accumulator.message().content
        guard case .text(let text, _) = content[0], case .toolUse(_, _, .parsed(.array(let items))) = content[1] else {
            Issue.record("unexpected content")
            return
        }
        #expect(text.utf8.count == 1_200_000)
        #expect(items.count == 200_000)
    }
}
