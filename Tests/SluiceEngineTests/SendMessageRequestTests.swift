import SluiceWire
import Testing

@testable import SluiceEngine

@Suite struct SendMessageRequestTests {
    func parse(_ json: String) throws(RPCError) -> SendMessageRequest {
        try SendMessageRequest(json: Array(json.utf8))
    }

    func upstream(_ request: SendMessageRequest, prefill: String? = nil, serverTools: [JSONValue] = []) throws -> JSONValue {
        try JSONValue(parsing: request.upstreamBody(conversation: request.messages, prefill: prefill, serverTools: serverTools))
    }

    @Test func unknownAndAPIParametersPassThroughWithExactNumbers() throws {
        let request = try parse(
            #"""
            {"model":"m","max_tokens":10,"messages":[{"role":"user","content":"x"}],
             "temperature":0.70000000000000000001,"top_k":9007199254740993,"top_p":0.9,"stop_sequences":["END"],
             "thinking":{"type":"enabled","budget_tokens":2048},"tool_choice":{"type":"any"},"service_tier":"auto",
             "future_parameter":{"n":1e400},"simulation":{"seed":1},"include_message":true,"stream":false}
            """#)
        #expect(request.thinkingEnabled)
        #expect(request.includeMessage)
        let body = try upstream(request)
        let serialized = body.serializedString
        #expect(serialized.contains(#""top_k":9007199254740993"#))
        #expect(serialized.contains(#""temperature":0.70000000000000000001"#))
        #expect(serialized.contains(#""future_parameter":{"n":1e400}"#))
        #expect(body["stop_sequences"] == ["END"])
        #expect(body["thinking"] == ["type": "enabled", "budget_tokens": 2048])
        #expect(body["tool_choice"] == ["type": "any"])
        #expect(body["service_tier"] == "auto")
        // Sluice's own fields stay in Sluice, and it always streams.
        #expect(body["simulation"] == nil)
        #expect(body["include_message"] == nil)
        #expect(body["stream"] == true)
    }

    @Test func toolsMixServerToolNamesAndAPIDefinitions() throws {
        let request = try parse(
            #"""
            {"model":"m","max_tokens":10,"messages":[{"role":"user","content":"x"}],
             "tools":["read_file",{"name":"get_weather","input_schema":{"type":"object","properties":{"n":{"type":"integer","maximum":9007199254740993}}}},
                      {"type":"web_search_20250305","name":"web_search","max_uses":2}]}
            """#)
        #expect(request.tools == ["read_file"])
        #expect(request.toolDefinitions.count == 2)
        let serverTool: JSONValue = ["name": "read_file", "description": "d", "input_schema": ["type": "object"]]
        let body = try upstream(request, serverTools: [serverTool])
        #expect(body["tools"]?.arrayValue?.compactMap { $0["name"]?.stringValue } == ["read_file", "get_weather", "web_search"])
        #expect(body.serializedString.contains(#""maximum":9007199254740993"#))
    }

    @Test func aClientToolNamedLikeAServerToolIsRefused() {
        #expect(
            throws: RPCError(
                .invalidArgument,
                #"tools[0]: the client tool 'read_file' has the name of a Sluice server tool; rename it, or name the server tool as the string "read_file""#
            )
        ) {
            try parse(
                #"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"read_file","input_schema":{}}]}"#
            )
        }
    }

    @Test func contentBlocksPassThroughVerbatim() throws {
        let messages = #"""
            [{"role":"user","content":[{"type":"text","text":"look","cache_control":{"type":"ephemeral"}},
              {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},
              {"type":"document","source":{"type":"url","url":"https://example.com/a.pdf"}}]},
             {"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"sig"},{"type":"redacted_thinking","data":"abc"},
              {"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"n":9007199254740993}}]},
             {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"12"}]}]
            """#
        let request = try parse(#"{"model":"m","max_tokens":10,"messages":\#(messages)}"#)
        #expect(try upstream(request)["messages"] == JSONValue(parsing: messages))
    }

    @Test(arguments: [
        (#"{"max_tokens":1,"messages":[{"role":"user","content":"x"}]}"#, "'model' is required and must be a non-empty string"),
        (
            #"{"model":"m","max_tokens":"1","messages":[{"role":"user","content":"x"}]}"#,
            "'max_tokens' is required and must be an integer from 1 to 128000"
        ),
        (
            #"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"text":"x"}]}]}"#,
            "messages[0].content[0] must be a content block: an object with a string 'type'"
        ),
        (#"{"model":"m","max_tokens":1,"messages":["x"]}"#, "messages[0] must be an object with 'role' and 'content'"),
        (
            #"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"system":[7]}"#,
            "system[0] must be a content block: an object with a string 'type'"
        ),
        (
            #"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tools":[7]}"#,
            "tools[0] must be a server tool name (a string) or an API tool definition (an object)"
        ),
        (
            #"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tools":[{"input_schema":{}}]}"#,
            "tools[0].name is required and must be a non-empty string"
        ),
        (
            #"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"a"},{"name":"a"}]}"#,
            "'tools' names 'a' twice; tool names must be unique"
        ),
        (
            #"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"thinking":true}"#,
            #"'thinking' must be an object with a string 'type' (e.g. {"type":"enabled","budget_tokens":2048})"#
        ),
        (
            #"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"include_message":1}"#,
            "'include_message' must be true or false"
        ),
    ])
    func invalidFieldsAreNamed(json: String, message: String) {
        #expect(throws: RPCError(.invalidArgument, message)) { try parse(json) }
    }
}
