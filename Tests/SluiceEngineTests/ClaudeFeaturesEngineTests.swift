import Logging
import SluiceUpstream
import SluiceWire
import Testing

@testable import SluiceEngine

/// Thinking, client tool calls, server tool blocks, citations and the retry rules for them.
@Suite struct ClaudeFeaturesEngineTests {
    let base = StreamEngineTests()

    func request(_ extra: String = "") throws -> SendMessageRequest {
        try SendMessageRequest(
            json: Array(#"{"model":"claude-test","max_tokens":100,"messages":[{"role":"user","content":"hi"}]\#(extra)}"#.utf8))
    }

    static let thinkingRequest = #","thinking":{"type":"enabled","budget_tokens":1024}"#
    static let weatherTool = #","tools":[{"name":"get_weather","input_schema":{"type":"object"}}]"#

    static func start(_ id: String = "msg_up") -> FakeUpstream.Step {
        .event(.messageStart(id: id, model: "claude-test", role: "assistant", usage: AnthropicUsage(inputTokens: 10, outputTokens: 1)))
    }

    static let thinkingBlock: [FakeUpstream.Step] = [
        .event(.contentBlockStart(index: 0, block: .thinking(""))),
        .event(.contentBlockDelta(index: 0, delta: .thinking("Let me "))),
        .event(.contentBlockDelta(index: 0, delta: .thinking("think."))),
        .event(.contentBlockDelta(index: 0, delta: .signature("sig=="))),
        .event(.contentBlockStop(index: 0)),
    ]

    static func toolUseBlock(index: Int) -> [FakeUpstream.Step] {
        [
            .event(.contentBlockStart(index: index, block: .toolUse(id: "toolu_1", name: "get_weather"))),
            .event(.contentBlockDelta(index: index, delta: .inputJSON(#"{"city": "S"#))),
            .event(.contentBlockDelta(index: index, delta: .inputJSON(#"ão", "n": 9007199254740993}"#))),
            .event(.contentBlockStop(index: index)),
        ]
    }

    static func end(_ reason: String, sequence: String? = nil, usage: AnthropicUsage = AnthropicUsage(outputTokens: 7)) -> [FakeUpstream
        .Step]
    {
        [.event(.messageDelta(stopReason: reason, stopSequence: sequence, usage: usage)), .event(.messageStop)]
    }

    @Test func thinkingAndAClientToolCallEndTheStreamForTheCallerToRun() async throws {
        let script = [Self.start()] + Self.thinkingBlock + Self.toolUseBlock(index: 1) + Self.end("tool_use")
        let upstream = FakeUpstream([script])
        let engine = base.makeEngine(upstream)
        let (events, end) = try await base.collect(
            try engine.start(request(Self.thinkingRequest + Self.weatherTool + #","include_message":true"#), caller: "a", deadline: nil))
        #expect(end == nil)
        #expect(
            base.types(events) == [
                "message_start", "thinking_delta", "thinking_delta", "thinking_signature", "tool_call_delta", "tool_call_delta",
                "tool_call", "message_stop", "stream_complete",
            ])
        #expect(upstream.requests.withLock { $0.count } == 1, "Sluice never runs a client tool")
        let call = try #require(events.first { $0["type"] == "tool_call" })
        #expect(call["tool_use_id"] == "toolu_1")
        #expect(call["name"] == "get_weather")
        #expect(call["input"]?.serializedString == #"{"city":"São","n":9007199254740993}"#)
        #expect(events.first { $0["type"] == "thinking_signature" }?["signature"] == "sig==")
        #expect(events.first { $0["type"] == "message_stop" }?["stop_reason"] == "tool_use")
        let message = try #require(events.last?["message"])
        #expect(
            message["content"]
                == [
                    ["type": "thinking", "thinking": "Let me think.", "signature": "sig=="],
                    ["type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": ["city": "São", "n": 9_007_199_254_740_993]],
                ])
        #expect(message["id"] == "msg_up")
        #expect(message["stop_reason"] == "tool_use")
    }

    @Test func serverToolBlocksCitationsAndStopSequencesReachTheCaller() async throws {
        let search: JSONValue = ["type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []]
        let citation: JSONValue = ["type": "web_search_result_location", "url": "https://example.com", "cited_text": "x"]
        let script: [FakeUpstream.Step] =
            [
                Self.start(),
                .event(
                    .contentBlockStart(
                        index: 0,
                        block: .other(
                            type: "server_tool_use",
                            raw: ["type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": [:]]))),
                .event(.contentBlockDelta(index: 0, delta: .inputJSON(#"{"query":"x"}"#))),
                .event(.contentBlockStop(index: 0)),
                .event(.contentBlockStart(index: 1, block: .other(type: "web_search_tool_result", raw: search))),
                .event(.contentBlockStop(index: 1)),
                .event(.contentBlockStart(index: 2, block: .text(""))),
                .event(.contentBlockDelta(index: 2, delta: .text("Found"))),
                .event(.contentBlockDelta(index: 2, delta: .citation(citation))),
                .event(.contentBlockStop(index: 2)),
            ]
            + Self.end(
                "stop_sequence", sequence: "END",
                usage: AnthropicUsage(outputTokens: 9, other: ["server_tool_use": ["web_search_requests": 1]]))
        let engine = base.makeEngine(FakeUpstream([script]))
        let (events, end) = try await base.collect(try engine.start(request(), caller: "a", deadline: nil))
        #expect(end == nil)
        #expect(
            base.types(events) == [
                "message_start", "content_block", "content_block", "message_delta", "citation", "message_stop", "stream_complete",
            ])
        #expect(events[1]["block"] == ["type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": ["query": "x"]])
        #expect(events[1]["index"] == 0)
        #expect(events[2]["block"] == search)
        #expect(events[4]["citation"] == citation)
        #expect(events[5]["stop_reason"] == "stop_sequence")
        #expect(events[5]["stop_sequence"] == "END")
        #expect(events.last?["usage"] == ["input_tokens": 10, "output_tokens": 9, "server_tool_use": ["web_search_requests": 1]])
        #expect(events.last?["message"] == nil)
    }

    /// With thinking enabled the API takes no prefill: even plain text after thinking restarts the message.
    @Test(arguments: [
        // Cut during thinking.
        Array(([Self.start()] + Self.thinkingBlock).prefix(3)),
        // Cut during the text that follows thinking.
        [Self.start()] + Self.thinkingBlock + [
            .event(.contentBlockStart(index: 1, block: .text(""))), .event(.contentBlockDelta(index: 1, delta: .text("Hel"))),
        ],
    ])
    func aDropWithThinkingEnabledRestarts(cut: [FakeUpstream.Step]) async throws {
        let whole =
            [Self.start("msg_2")] + Self.thinkingBlock + [
                .event(.contentBlockStart(index: 1, block: .text(""))), .event(.contentBlockDelta(index: 1, delta: .text("Hello"))),
                .event(.contentBlockStop(index: 1)),
            ] + Self.end("end_turn")
        let upstream = FakeUpstream([cut + [.fail(UpstreamFailure(.connectionReset, message: "reset"))], whole])
        let (events, end) = try await base.collect(
            try base.makeEngine(upstream).start(request(Self.thinkingRequest), caller: "a", deadline: nil))
        #expect(end == nil)
        #expect(events.first { $0["type"] == "upstream_retry" }?["mode"] == "restart")
        #expect(events.contains { $0["type"] == "message_restart" })
        let retryBody = try JSONValue(parsing: upstream.requests.withLock { $0[1] })
        #expect(retryBody["messages"] == [["role": "user", "content": "hi"]], "no assistant prefill")
        let afterRestart = events.drop { $0["type"] != "message_restart" }
        #expect(base.text(Array(afterRestart)) == "Hello")
    }

    @Test func aDropInsideAClientToolCallRestartsWithoutPrefill() async throws {
        let text: [FakeUpstream.Step] = [
            .event(.contentBlockStart(index: 0, block: .text(""))), .event(.contentBlockDelta(index: 0, delta: .text("Checking."))),
            .event(.contentBlockStop(index: 0)),
        ]
        let cut = [Self.start()] + text + Array(Self.toolUseBlock(index: 1).prefix(2))
        let whole = [Self.start("msg_2")] + text + Self.toolUseBlock(index: 1) + Self.end("tool_use")
        let upstream = FakeUpstream([cut + [.fail(UpstreamFailure(.streamEndedEarly, message: "cut"))], whole])
        let (events, end) = try await base.collect(
            try base.makeEngine(upstream).start(request(Self.weatherTool), caller: "a", deadline: nil))
        #expect(end == nil)
        #expect(events.first { $0["type"] == "upstream_retry" }?["mode"] == "restart")
        let retryBody = try JSONValue(parsing: upstream.requests.withLock { $0[1] })
        #expect(retryBody["messages"]?.arrayValue?.count == 1, "no assistant prefill")
        #expect(events.filter { $0["type"] == "tool_call" }.count == 1)
        #expect(events.last?["usage"]?["input_tokens"] == 20, "usage sums both attempts")
    }

    @Test func includeMessageAssemblesAContinuedText() async throws {
        let upstream = FakeUpstream([
            Array(FakeUpstream.message(["Hello", " wor"]).prefix(4)) + [.fail(UpstreamFailure(.streamEndedEarly, message: "cut"))],
            FakeUpstream.message(["ld!"], id: "msg_2"),
        ])
        let (events, end) = try await base.collect(
            try base.makeEngine(upstream).start(request(#","include_message":true"#), caller: "a", deadline: nil))
        #expect(end == nil)
        #expect(events.first { $0["type"] == "upstream_retry" }?["mode"] == "continue")
        #expect(events.last?["message"]?["content"] == [["type": "text", "text": "Hello world!"]])
    }

    @Test func aClientToolCallWhoseInputIsNotJSONFailsTheStreamNamingTheCall() async throws {
        let script: [FakeUpstream.Step] =
            [
                Self.start(),
                .event(.contentBlockStart(index: 0, block: .toolUse(id: "toolu_9", name: "get_weather"))),
                .event(.contentBlockDelta(index: 0, delta: .inputJSON(#"{"city": "#))),
                .event(.contentBlockStop(index: 0)),
            ] + Self.end("tool_use")
        let (events, end) = try await base.collect(
            try base.makeEngine(FakeUpstream([script])).start(request(Self.weatherTool), caller: "a", deadline: nil))
        #expect(end?.code == .internal)
        #expect(end?.message.contains("tool call toolu_9 with input that is not JSON") == true)
        #expect(events.last?["type"] == "stream_error")
        #expect(!events.contains { $0["type"] == "tool_call" })
    }

    @Test func retryModes() {
        #expect(StreamAttempts.retryMode(nothingSent: true, mustRestart: true) == .transparent)
        #expect(StreamAttempts.retryMode(nothingSent: false, mustRestart: false) == .continue)
        #expect(StreamAttempts.retryMode(nothingSent: false, mustRestart: true) == .restart)
    }
}
