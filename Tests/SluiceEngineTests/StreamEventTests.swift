import SluiceWire
import Testing

@testable import SluiceEngine

@Suite struct StreamEventTests {
    static let events: [StreamEvent] = [
        .streamQueued(position: 3),
        .messageStart(id: "msg_1", role: "assistant", model: "claude"),
        .messageDelta(id: "msg_1", delta: "quote \" backslash \\ newline \n tab \t bell \u{07} é ✓"),
        .messageStop(id: "msg_1", stopReason: nil, stopSequence: nil),
        .messageStop(id: "msg_1", stopReason: "stop_sequence", stopSequence: "END"),
        .messageDelta(id: "msg_1", delta: ""),
        .messageDelta(id: "", delta: "\u{0}\u{1F}\u{7F} 😀 \\u0041"),
        .thinkingDelta(id: "msg_1", delta: "hmm \" é"),
        .thinkingSignature(id: "msg_1", signature: "EqQBCgIYAhIM"),
        .redactedThinking(id: "msg_1", data: "EmwKAhgB"),
        .toolCallDelta(id: "msg_1", toolUseID: "toolu_1", name: "get_weather", partialJSON: "{\"city\": \"S"),
        .toolCall(id: "msg_1", toolUseID: "toolu_1", name: "get_weather", input: ["city": "São Paulo", "n": 1]),
        .contentBlock(id: "msg_1", index: 2, block: ["type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []]),
        .citation(id: "msg_1", citation: ["type": "char_location", "cited_text": "42"]),
        .messageRestart(id: "msg_1", reason: "dropped"),
        .upstreamRetry(attempt: 2, reason: "overloaded", delayMilliseconds: 250, mode: .continue),
        .toolStart(id: "tu_1", name: "read_file", input: ["path": "a.txt"]),
        .toolProgress(id: "tu_1", message: "reading", percentage: 50),
        .toolProgress(id: "tu_1", message: "reading", percentage: nil),
        .toolComplete(id: "tu_1", output: ["text": "x", "bytes": 1]),
        .toolError(id: "tu_1", error: "no such file"),
        .streamError(error: "UNAVAILABLE", details: ["attempts": 3]),
        .streamError(error: "CANCELLED", details: nil),
        .streamComplete(usage: ["input_tokens": 1, "output_tokens": 2], message: nil),
        .streamComplete(usage: ["input_tokens": 1, "output_tokens": 2], message: ["type": "message", "content": []]),
        .streamHandoff(reason: "shutdown"),
    ]

    /// The hand-written encoder must produce exactly what serializing the same object would: valid JSON,
    /// every key, sorted keys.
    @Test(arguments: events)
    func encodingMatchesTheGenericSerializer(_ event: StreamEvent) throws {
        let encoded = event.encoded(streamID: "str_\"1", seq: 42)
        guard case .object(var members) = try JSONValue(parsing: encoded) else {
            Issue.record("not an object")
            return
        }
        #expect(members["seq"] == .number(42))
        #expect(members["stream_id"] == .string("str_\"1"))
        #expect(members["type"] == .string(event.type))
        members["seq"] = nil
        #expect(JSONValue.object(members).serialized() != encoded)
        members["seq"] = .number(42)
        #expect(JSONValue.object(members).serialized() == encoded)
    }

    /// The deltas' frames are written without the member list: the same bytes at any seq.
    @Test(arguments: [0, 1, 9, 10, 99_999, Int.max])
    func deltaFramesMatchTheGenericSerializerAtAnySeq(_ seq: Int) {
        let frames: [(StreamEvent, type: String, delta: String)] = [
            (.messageDelta(id: "msg_2", delta: "a\nb"), "message_delta", "a\nb"),
            (.thinkingDelta(id: "msg_2", delta: "t"), "thinking_delta", "t"),
        ]
        for (event, type, delta) in frames {
            let generic = JSONValue.object([
                "delta": .string(delta), "id": "msg_2", "seq": .integer(seq), "stream_id": "st_1", "type": .string(type),
            ])
            #expect(event.encoded(streamID: "st_1", seq: seq) == generic.serialized())
        }
    }
}
