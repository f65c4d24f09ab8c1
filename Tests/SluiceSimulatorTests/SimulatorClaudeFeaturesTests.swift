import SluiceUpstream
import SluiceWire
import Testing

@testable import SluiceSimulator

/// Thinking, citations, hosted web search, prompt caching and exact numbers: each streamed message equals the
/// non-streamed answer for the same scenario.
@Suite struct SimulatorClaudeFeaturesTests {
    typealias Harness = SimulatorTests

    /// Streams and fetches whole `extra` under `scenario`; returns the accumulated streamed message and events.
    func bothWays(port: Int, extra: [String: JSONValue], scenario: String, messages: JSONValue? = nil) async throws -> (
        message: AccumulatedMessage, events: [AnthropicEvent], whole: JSONValue
    ) {
        let messages = messages ?? [["role": "user", "content": "Tell me about streams."]]
        let streamed = try await Harness.fetch(
            port: port, body: Harness.requestBody(messages: messages, stream: true, maxTokens: 4096, extra: extra), scenario: scenario)
        #expect(streamed.status == 200, "\(streamed.text)")
        let accumulator = try streamed.accumulated()
        #expect(accumulator.isComplete)
        let whole = try await Harness.fetch(
            port: port, body: Harness.requestBody(messages: messages, stream: false, maxTokens: 4096, extra: extra), scenario: scenario)
        let json = try #require(whole.json)
        #expect(accumulator.jsonValue == json)
        return (accumulator.message(), try streamed.events(), json)
    }

    static let thinking: JSONValue = ["type": "enabled", "budget_tokens": 2048]

    @Test func thinkingComesFirstWithASignatureAndCountsAsOutput() async throws {
        try await Harness.withSimulator { _, port in
            let (message, events, _) = try await bothWays(
                port: port, extra: ["thinking": Self.thinking], scenario: #"{"seed":3,"thinking_tokens":40,"output_tokens":20}"#)
            guard case .thinking(let thinking, let signature)? = message.content.first, case .text? = message.content.last else {
                Issue.record("unexpected content \(message.content)")
                return
            }
            #expect(!thinking.isEmpty)
            #expect(signature.hasPrefix("Eq"))
            #expect(events.contains(.contentBlockDelta(index: 0, delta: .signature(signature))))
            #expect(events.filter { if case .contentBlockDelta(0, .thinking) = $0 { true } else { false } }.count > 3)
            #expect((message.usage.outputTokens ?? 0) >= 55)

            // Without thinking in the request there is no thinking block.
            let (plain, _, _) = try await bothWays(port: port, extra: [:], scenario: #"{"seed":3,"thinking_tokens":40,"output_tokens":20}"#)
            #expect(plain.content.count == 1)
        }
    }

    @Test func aPrefillWithThinkingEnabledIsRefusedLikeTheAPI() async throws {
        try await Harness.withSimulator { _, port in
            let messages: JSONValue = [["role": "user", "content": "hi"], ["role": "assistant", "content": "Hel"]]
            let refused = try await Harness.fetch(
                port: port,
                body: Harness.requestBody(messages: messages, stream: true, maxTokens: 4096, extra: ["thinking": Self.thinking]),
                scenario: #"{"thinking_tokens":10}"#)
            #expect(refused.status == 400)
            #expect(refused.json?["error"]?["type"] == "invalid_request_error")
            #expect(refused.json?["error"]?["message"]?.stringValue?.contains("When `thinking` is enabled") == true)
            // A final assistant message that starts with its thinking block is what the API does accept.
            let withThinking: JSONValue = [
                ["role": "user", "content": "hi"],
                [
                    "role": "assistant",
                    "content": [["type": "thinking", "thinking": "hm", "signature": "sig"], ["type": "text", "text": "Hel"]],
                ],
            ]
            let accepted = try await Harness.fetch(
                port: port,
                body: Harness.requestBody(messages: withThinking, stream: false, maxTokens: 4096, extra: ["thinking": Self.thinking]))
            #expect(accepted.status == 200, "\(accepted.text)")
            let badBudget = try await Harness.fetch(
                port: port, body: Harness.requestBody(stream: false, maxTokens: 1000, extra: ["thinking": Self.thinking]))
            #expect(badBudget.status == 400)
        }
    }

    @Test func documentsWithCitationsEnabledAreCited() async throws {
        try await Harness.withSimulator { _, port in
            let messages: JSONValue = [
                [
                    "role": "user",
                    "content": [
                        [
                            "type": "document", "title": "Guide", "citations": ["enabled": true],
                            "source": ["type": "text", "media_type": "text/plain", "data": "Streams carry events in order."],
                        ],
                        ["type": "text", "text": "What do streams carry?"],
                    ],
                ]
            ]
            let (message, events, _) = try await bothWays(port: port, extra: [:], scenario: #"{"seed":1}"#, messages: messages)
            guard case .text(_, let citations)? = message.content.first else {
                Issue.record("no text")
                return
            }
            #expect(
                citations == [
                    [
                        "type": "char_location", "cited_text": "Streams carry events in order.", "document_index": 0,
                        "document_title": "Guide",
                        "start_char_index": 0, "end_char_index": 30,
                    ]
                ])
            #expect(events.contains { if case .contentBlockDelta(0, .citation) = $0 { true } else { false } })
        }
    }

    @Test func webSearchIsAServerToolBlockThenItsResultThenACitedAnswer() async throws {
        try await Harness.withSimulator { _, port in
            let tools: JSONValue = [["type": "web_search_20250305", "name": "web_search", "max_uses": 1]]
            let (message, events, whole) = try await bothWays(port: port, extra: ["tools": tools], scenario: #"{"seed":2}"#)
            #expect(message.content.count == 3)
            guard case .other(let use)? = message.content.first, case .other(let result)? = message.content.dropFirst().first,
                case .text(_, let citations)? = message.content.last
            else {
                Issue.record("unexpected content \(message.content)")
                return
            }
            #expect(use["type"] == "server_tool_use")
            #expect(use["input"] == ["query": "Tell me about streams."])
            #expect(result["type"] == "web_search_tool_result")
            #expect(result["tool_use_id"] == use["id"])
            #expect(citations.first?["type"] == "web_search_result_location")
            #expect(whole["usage"]?["server_tool_use"] == ["web_search_requests": 1])
            #expect(events.filter { if case .contentBlockDelta(0, .inputJSON) = $0 { true } else { false } }.count > 1)
        }
    }

    @Test func cacheControlWritesTheCacheThenReadsIt() async throws {
        try await Harness.withSimulator { _, port in
            let system: JSONValue = [
                [
                    "type": "text", "text": .string(String(repeating: "Long stable instructions. ", count: 40)),
                    "cache_control": ["type": "ephemeral"],
                ]
            ]
            let body = Harness.requestBody(stream: false, extra: ["system": system])
            let first = try #require(try await Harness.fetch(port: port, body: body).json?["usage"])
            let second = try #require(try await Harness.fetch(port: port, body: body).json?["usage"])
            let cached = try #require(first["cache_creation_input_tokens"]?.intValue)
            #expect(cached > 200)
            #expect(first["cache_read_input_tokens"] == 0)
            #expect(second["cache_creation_input_tokens"] == 0)
            #expect(second["cache_read_input_tokens"]?.intValue == cached)
            #expect(first["input_tokens"] == second["input_tokens"])
            let uncached = try #require(try await Harness.fetch(port: port, body: Harness.requestBody(stream: false)).json?["usage"])
            #expect(uncached["cache_creation_input_tokens"] == 0 && uncached["cache_read_input_tokens"] == 0)
        }
    }

    @Test func imagesCountAsInputTokens() async throws {
        try await Harness.withSimulator { _, port in
            let image: JSONValue = [
                "type": "image",
                "source": ["type": "base64", "media_type": "image/png", "data": .string(String(repeating: "iVBORw0KGgo", count: 200))],
            ]
            let with = try await Harness.fetch(
                port: port,
                body: Harness.requestBody(
                    messages: [["role": "user", "content": [image, ["type": "text", "text": "hi"]]]], stream: false))
            let without = try await Harness.fetch(
                port: port,
                body: Harness.requestBody(messages: [["role": "user", "content": [["type": "text", "text": "hi"]]]], stream: false))
            let withTokens = try #require(with.json?["usage"]?["input_tokens"]?.intValue)
            let withoutTokens = try #require(without.json?["usage"]?["input_tokens"]?.intValue)
            #expect(withTokens > withoutTokens + 500)
        }
    }

    @Test func toolInputNumbersKeepTheirExactText() async throws {
        try await Harness.withSimulator { _, port in
            let tools: JSONValue = [["name": "count", "input_schema": ["type": "object"]]]
            let scenario = #"{"seed":4,"tool_calls":[{"name":"count","input":{"n":9007199254740993,"x":1.10,"s":"é😀 \"q\""}}]}"#
            let streamed = try await Harness.fetch(
                port: port, body: Harness.requestBody(stream: true, extra: ["tools": tools]), scenario: scenario)
            var fragments = ""
            for case .contentBlockDelta(_, .inputJSON(let fragment)) in try streamed.events() { fragments += fragment }
            #expect(fragments == #"{"n":9007199254740993,"s":"é😀 \"q\"","x":1.10}"#)
            let whole = try await Harness.fetch(
                port: port, body: Harness.requestBody(stream: false, extra: ["tools": tools]), scenario: scenario)
            #expect(whole.text.contains(#""n":9007199254740993"#))
            #expect(whole.text.contains(#""x":1.10"#))
        }
    }
}
