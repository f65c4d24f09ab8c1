import SluiceUpstream
import SluiceWire
import Testing

/// Hand-recorded streams in the documented wire format.
enum AnthropicFixtures {
    /// Text then a tool call: pings mid-stream, `partial_json` split mid-token with an empty first fragment.
    static let toolUseStream = #"""
        event: message_start
        data: {"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":2,"service_tier":"standard"}}}

        event: ping
        data: {"type": "ping"}

        event: content_block_start
        data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay, let me check the weather in São Paulo"}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" for you ☀️ \u2014 one moment."}}

        event: content_block_stop
        data: {"type":"content_block_stop","index":0}

        event: content_block_start
        data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"locat"}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ion\": \"São Pa"}}

        event: ping
        data: {"type": "ping"}

        event: content_block_delta
        data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ulo, BR\", \"unit\": \"cel"}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"sius\", \"days\": 3, \"detail\": tr"}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ue}"}}

        event: content_block_stop
        data: {"type":"content_block_stop","index":1}

        event: message_delta
        data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

        event: message_stop
        data: {"type":"message_stop"}


        """#

    static let toolUseEvents: [AnthropicEvent] = [
        .messageStart(
            id: "msg_01XFDUDYJgAACzvnptvVoYEL", model: "claude-sonnet-4-5-20250929", role: "assistant",
            usage: AnthropicUsage(
                inputTokens: 472, outputTokens: 2, cacheCreationInputTokens: 0, cacheReadInputTokens: 0, other: ["service_tier": "standard"]
            )
        ),
        .ping,
        .contentBlockStart(index: 0, block: .text("")),
        .contentBlockDelta(index: 0, delta: .text("Okay, let me check the weather in São Paulo")),
        .contentBlockDelta(index: 0, delta: .text(" for you ☀️ — one moment.")),
        .contentBlockStop(index: 0),
        .contentBlockStart(index: 1, block: .toolUse(id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6", name: "get_weather")),
        .contentBlockDelta(index: 1, delta: .inputJSON("")),
        .contentBlockDelta(index: 1, delta: .inputJSON(#"{"locat"#)),
        .contentBlockDelta(index: 1, delta: .inputJSON(#"ion": "São Pa"#)),
        .ping,
        .contentBlockDelta(index: 1, delta: .inputJSON(#"ulo, BR", "unit": "cel"#)),
        .contentBlockDelta(index: 1, delta: .inputJSON(#"sius", "days": 3, "detail": tr"#)),
        .contentBlockDelta(index: 1, delta: .inputJSON("ue}")),
        .contentBlockStop(index: 1),
        .messageDelta(stopReason: "tool_use", stopSequence: nil, usage: AnthropicUsage(outputTokens: 89)),
        .messageStop,
    ]

    /// Thinking, redacted thinking, a citation, and types this version doesn't know.
    static let thinkingStream = #"""
        event: message_start
        data: {"type":"message_start","message":{"id":"msg_02","type":"message","role":"assistant","model":"claude-opus-4-1","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1200,"output_tokens":1,"cache_read_input_tokens":0}}}

        event: content_block_start
        data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"The user wants"}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":" a number."}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3h"}}

        event: content_block_stop
        data: {"type":"content_block_stop","index":0}

        event: content_block_start
        data: {"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"EmwKAhgBEgy3va3pzix/LafPsn4a"}}

        event: content_block_stop
        data: {"type":"content_block_stop","index":1}

        event: content_block_start
        data: {"type":"content_block_start","index":2,"content_block":{"type":"text","text":""}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"The answer"}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":2,"delta":{"type":"citations_delta","citation":{"type":"char_location","cited_text":"42","document_index":0,"document_title":"Guide","start_char_index":10,"end_char_index":12}}}

        event: brand_new_event
        data: {"type":"brand_new_event","anything":[1,2]}

        event: content_block_delta
        data: {"type":"content_block_delta","index":2,"delta":{"type":"shiny_new_delta","value":1}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":" is 42."}}

        event: content_block_stop
        data: {"type":"content_block_stop","index":2}

        event: content_block_start
        data: {"type":"content_block_start","index":3,"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}}

        event: content_block_stop
        data: {"type":"content_block_stop","index":3}

        event: message_delta
        data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":120,"cache_read_input_tokens":64}}

        event: message_stop
        data: {"type":"message_stop"}


        """#

    static func decodeAll(_ chunks: [[UInt8]]) throws -> [AnthropicEvent] {
        var parser = SSEParser()
        var events: [AnthropicEvent] = []
        for chunk in chunks {
            for sse in try parser.feed(chunk) { events.append(try AnthropicEvent.decode(sse)) }
        }
        return events
    }

    static func decodeAll(_ text: String) throws -> [AnthropicEvent] {
        try decodeAll([Array(text.utf8)])
    }

    static func decode(event: String, data: String) throws(AnthropicDecodingError) -> AnthropicEvent {
        try AnthropicEvent.decode(SSEEvent(event: event, data: data))
    }
}

/// Deterministic generator, so failures reproduce.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite struct AnthropicEventTests {
    @Test func decodesTheRecordedToolUseStream() throws {
        #expect(try AnthropicFixtures.decodeAll(AnthropicFixtures.toolUseStream) == AnthropicFixtures.toolUseEvents)
    }

    @Test func everySplitPointYieldsIdenticalEvents() throws {
        let bytes = Array(AnthropicFixtures.toolUseStream.utf8)
        for split in 0...bytes.count {
            let events = try AnthropicFixtures.decodeAll([Array(bytes[..<split]), Array(bytes[split...])])
            #expect(events == AnthropicFixtures.toolUseEvents, "split at \(split)")
            if events != AnthropicFixtures.toolUseEvents { return }
        }
    }

    @Test func randomChunkingsYieldIdenticalEvents() throws {
        var rng = SplitMix64(state: 2024)
        for stream in [AnthropicFixtures.toolUseStream, AnthropicFixtures.thinkingStream] {
            let bytes = Array(stream.utf8)
            let whole = try AnthropicFixtures.decodeAll([bytes])
            for _ in 0..<300 {
                var chunks: [[UInt8]] = []
                var index = 0
                while index < bytes.count {
                    let end = min(bytes.count, index + Int.random(in: 0...48, using: &rng))
                    chunks.append(Array(bytes[index..<end]))
                    index = end
                }
                #expect(try AnthropicFixtures.decodeAll(chunks) == whole)
            }
        }
    }

    @Test func crlfFramingDecodesTheSame() throws {
        let crlf = AnthropicFixtures.toolUseStream.replacing("\n", with: "\r\n")
        #expect(try AnthropicFixtures.decodeAll(crlf) == AnthropicFixtures.toolUseEvents)
    }

    @Test func decodesThinkingCitationsAndUnknownTypes() throws {
        let events = try AnthropicFixtures.decodeAll(AnthropicFixtures.thinkingStream)
        #expect(events.count == 19)
        #expect(events[1] == .contentBlockStart(index: 0, block: .thinking("")))
        #expect(events[4] == .contentBlockDelta(index: 0, delta: .signature("EqQBCgIYAhIM1gbcDa9GJwZA2b3h")))
        #expect(events[6] == .contentBlockStart(index: 1, block: .redactedThinking(data: "EmwKAhgBEgy3va3pzix/LafPsn4a")))
        #expect(
            events[10]
                == .contentBlockDelta(
                    index: 2,
                    delta: .citation([
                        "type": "char_location", "cited_text": "42", "document_index": 0, "document_title": "Guide",
                        "start_char_index": 10, "end_char_index": 12,
                    ])))
        #expect(events[11] == .unknown(event: "brand_new_event"))
        #expect(
            events[12]
                == .contentBlockDelta(index: 2, delta: .other(type: "shiny_new_delta", raw: ["type": "shiny_new_delta", "value": 1])))
        #expect(
            events[15]
                == .contentBlockStart(
                    index: 3,
                    block: .other(
                        type: "server_tool_use", raw: ["type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": [:]]
                    )))
        #expect(
            events[17]
                == .messageDelta(
                    stopReason: "end_turn", stopSequence: nil, usage: AnthropicUsage(outputTokens: 120, cacheReadInputTokens: 64)
                ))
    }

    @Test func decodesMidStreamErrors() throws {
        let data =
            #"{"type":"error","error":{"details":null,"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#
        #expect(
            try AnthropicFixtures.decode(event: "error", data: data)
                == .error(type: "overloaded_error", message: "Overloaded", requestID: "req_011CSHoEeqs5C35K2UUqR7Fy"))
        #expect(
            try AnthropicFixtures.decode(event: "error", data: #"{"type":"error","error":{"type":"api_error"}}"#)
                == .error(type: "api_error", message: "", requestID: nil))
    }

    @Test func unnamedEventsFallBackToThePayloadType() throws {
        #expect(
            try AnthropicFixtures.decode(event: "message", data: #"{"type":"content_block_stop","index":4}"#) == .contentBlockStop(index: 4)
        )
        #expect(try AnthropicFixtures.decode(event: "message", data: #"{"type":"ping"}"#) == .ping)
        #expect(try AnthropicFixtures.decode(event: "message", data: #"{"type":"future_thing"}"#) == .unknown(event: "future_thing"))
        #expect(try AnthropicFixtures.decode(event: "message", data: "not json") == .unknown(event: "message"))
        #expect(try AnthropicFixtures.decode(event: "message", data: #"{"type":"message"}"#) == .unknown(event: "message"))
    }

    @Test func payloadFreeEventsIgnoreTheirData() throws {
        #expect(try AnthropicFixtures.decode(event: "ping", data: "") == .ping)
        #expect(try AnthropicFixtures.decode(event: "message_stop", data: "{garbage") == .messageStop)
    }

    @Test func toleratesAbsentOptionalFields() throws {
        #expect(
            try AnthropicFixtures.decode(event: "message_delta", data: #"{"type":"message_delta","delta":{}}"#)
                == .messageDelta(stopReason: nil, stopSequence: nil, usage: AnthropicUsage()))
        #expect(
            try AnthropicFixtures.decode(
                event: "message_delta", data: #"{"delta":{"stop_reason":"stop_sequence","stop_sequence":"END"},"usage":null}"#)
                == .messageDelta(stopReason: "stop_sequence", stopSequence: "END", usage: AnthropicUsage()))
        #expect(
            try AnthropicFixtures.decode(event: "message_start", data: #"{"message":{"id":"m","model":"x"}}"#)
                == .messageStart(id: "m", model: "x", role: "assistant", usage: AnthropicUsage()))
        #expect(
            try AnthropicFixtures.decode(event: "content_block_start", data: #"{"index":0,"content_block":{"type":"text"}}"#)
                == .contentBlockStart(index: 0, block: .text("")))
    }

    @Test(arguments: ["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "error"])
    func malformedJSONNamesTheEvent(_ name: String) {
        for data in ["{\"type\":", "", "[1,2]", "\"text\""] {
            let error = #expect(throws: AnthropicDecodingError.self) { try AnthropicFixtures.decode(event: name, data: data) }
            #expect(error?.event == name)
            #expect(error?.description.contains("'\(name)'") == true)
        }
    }

    @Test(arguments: [
        ("message_start", #"{"type":"message_start"}"#, "'message'"),
        ("message_start", #"{"message":{"id":"m"}}"#, "'model'"),
        ("message_start", #"{"message":{"id":"m","model":"x","usage":{"input_tokens":"12"}}}"#, "'usage.input_tokens'"),
        ("message_start", #"{"message":{"id":"m","model":"x","usage":{"output_tokens":-1}}}"#, "'usage.output_tokens'"),
        ("content_block_start", #"{"content_block":{"type":"text"}}"#, "'index'"),
        ("content_block_start", #"{"index":0,"content_block":{"type":"tool_use","id":"t"}}"#, "'name'"),
        ("content_block_start", #"{"index":0,"content_block":{"text":""}}"#, "'type'"),
        ("content_block_delta", #"{"index":-1,"delta":{"type":"text_delta","text":"a"}}"#, "'index'"),
        ("content_block_delta", #"{"index":1.5,"delta":{"type":"text_delta","text":"a"}}"#, "'index'"),
        ("content_block_delta", #"{"index":0,"delta":{"type":"text_delta"}}"#, "'text'"),
        ("content_block_delta", #"{"index":0,"delta":{"type":"input_json_delta","partial_json":{}}}"#, "'partial_json'"),
        ("content_block_delta", #"{"index":0,"delta":{"type":"citations_delta"}}"#, "'citation'"),
        ("content_block_delta", #"{"index":0}"#, "'delta'"),
        ("content_block_stop", #"{"index":"0"}"#, "'index'"),
        ("message_delta", #"{"delta":{"stop_reason":7}}"#, "'stop_reason'"),
        ("message_delta", #"{"delta":{},"usage":[]}"#, "'usage'"),
        ("error", #"{"error":{"message":"m"}}"#, "'type'"),
    ])
    func missingOrMistypedFieldsAreReported(_ name: String, _ data: String, _ field: String) {
        let error = #expect(throws: AnthropicDecodingError.self) { try AnthropicFixtures.decode(event: name, data: data) }
        #expect(error?.event == name)
        #expect(error?.reason.contains(field) == true, "\(error?.reason ?? "")")
    }
}

/// The text-delta fast path (`AnthropicEvent.textDelta(payload:)`): taken for the shapes the API and the simulator
/// send, and whenever it answers, the same index and text as the full parse.
@Suite struct AnthropicTextDeltaTests {
    /// The index and text by the full parse's rules (what `decode` gives without the fast path).
    static func fullParse(_ payload: String) -> (index: Int, text: String)? {
        guard let root = try? JSONValue(parsing: payload), let index = root["index"]?.intValue, index >= 0,
            let delta = root["delta"], delta["type"] == "text_delta", let text = delta["text"]?.stringValue
        else { return nil }
        return (index, text)
    }

    @Test(arguments: [
        #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        #"{"delta":{"text":"Hello","type":"text_delta"},"index":12,"type":"content_block_delta"}"#,
        " { \"type\" : \"content_block_delta\" ,\n\t\"index\" :\r 3 , \"delta\" : { \"type\" : \"text_delta\" , \"text\" : \"x\" } } \n",
        #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}"#,
        #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"quote \" slash \/ \\ \n\t \u00e9 \ud83d\ude00 lone \ud800 end"}}"#,
        #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"São Paulo ☀️"}}"#,
        #"{"type":"content_block_delta","index":999999999999999999,"delta":{"type":"text_delta","text":"big"}}"#,
    ])
    func takesTheTextDeltaShapes(_ payload: String) throws {
        let fast = try #require(AnthropicEvent.textDelta(payload: payload))
        let full = try #require(Self.fullParse(payload))
        #expect(fast.index == full.index)
        #expect(fast.text == full.text)
    }

    /// Not the exact shape (other members, repeats, other types, numbers in other forms, broken JSON): left to the
    /// full parse, which still decodes the valid ones and reports the others.
    @Test(arguments: [
        #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"},"extra":1}"#,
        #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a","extra":1}}"#,
        #"{"index":0,"delta":{"type":"text_delta","text":"a"}}"#,
        #"{"type":"content_block_delta","index":0,"delta":{"text":"a"}}"#,
        #"{"type":"content_block_delta","index":0,"index":1,"delta":{"type":"text_delta","text":"a"}}"#,
        #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a","text":"b"}}"#,
        #"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"a"}}"#,
        #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delt\u0061","text":"a"}}"#,
        #"{"type":"content_block_delta","ind\u0065x":0,"delta":{"type":"text_delta","text":"a"}}"#,
        #"{"type":"message","index":0,"delta":{"type":"text_delta","text":"a"}}"#,
        #"{"type":"content_block_delta","index":-1,"delta":{"type":"text_delta","text":"a"}}"#,
        #"{"type":"content_block_delta","index":-0,"delta":{"type":"text_delta","text":"a"}}"#,
        #"{"type":"content_block_delta","index":01,"delta":{"type":"text_delta","text":"a"}}"#,
        #"{"type":"content_block_delta","index":1.0,"delta":{"type":"text_delta","text":"a"}}"#,
        #"{"type":"content_block_delta","index":1e0,"delta":{"type":"text_delta","text":"a"}}"#,
        #"{"type":"content_block_delta","index":"0","delta":{"type":"text_delta","text":"a"}}"#,
        #"{"type":"content_block_delta","index":9999999999999999999,"delta":{"type":"text_delta","text":"a"}}"#,
        #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":7}}"#,
        #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\x"}}"#,
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"raw \u{01} control\"}}",
        #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}"#,
        #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}}}"#,
        #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}} x"#,
        #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"},}"#,
        #"{"type":"content_block_delta","index":0 "delta":{"type":"text_delta","text":"a"}}"#,
        #"{"type":"content_block_delta","index":0,"delta":{}}"#,
        #"{}"#,
        "",
        "[]",
    ])
    func leavesOtherShapesToTheFullParse(_ payload: String) throws {
        #expect(AnthropicEvent.textDelta(payload: payload) == nil)
        let full = Self.fullParse(payload)
        let decoded = try? AnthropicFixtures.decode(event: "content_block_delta", data: payload)
        if let full {
            #expect(decoded == .contentBlockDelta(index: full.index, delta: .text(full.text)))
        }
    }

    /// Every prefix and every one-byte change of a valid payload: the fast path never answers differently.
    @Test func neverDisagreesWithTheFullParseOnMutations() {
        let payload = Array(#"{"type":"content_block_delta","index":10,"delta":{"type":"text_delta","text":"a\"b\u00e9"}}"#.utf8)
        var variants: [[UInt8]] = (0...payload.count).map { Array(payload[..<$0]) }
        for position in payload.indices {
            for replacement in Array(#" {}[]":,\0123456789aetx-.u"#.utf8) + [0x01, 0xC3, 0xFF] {
                var changed = payload
                changed[position] = replacement
                variants.append(changed)
            }
        }
        var taken = 0
        for variant in variants {
            let text = String(decoding: variant, as: UTF8.self)
            guard let fast = AnthropicEvent.textDelta(payload: text) else { continue }
            taken += 1
            let full = Self.fullParse(text)
            #expect(full?.index == fast.index && full?.text == fast.text, "\(text)")
        }
        #expect(taken > 0)
    }

    @Test func decodeUsesItForNamedAndUnnamedEvents() throws {
        let payload = #"{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"hi\n"}}"#
        #expect(
            try AnthropicFixtures.decode(event: "content_block_delta", data: payload) == .contentBlockDelta(index: 2, delta: .text("hi\n")))
        #expect(try AnthropicFixtures.decode(event: "message", data: payload) == .contentBlockDelta(index: 2, delta: .text("hi\n")))
    }
}
