import SluiceUpstream
import SluiceWire
import Testing

@Suite struct AnthropicUsageTests {
    static let webSearchStream = #"""
        event: message_start
        data: {"type":"message_start","message":{"id":"msg_ws","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":10,"cache_creation_input_tokens":100,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":0},"output_tokens":1,"service_tier":"standard"}}}

        event: content_block_start
        data: {"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"srvtoolu_9","name":"web_search","input":{}}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"query\": \"caf"}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"é\", \"n\": 9007199254740993}"}}

        event: content_block_stop
        data: {"type":"content_block_stop","index":0}

        event: content_block_start
        data: {"type":"content_block_start","index":1,"content_block":{"type":"web_search_tool_result","tool_use_id":"srvtoolu_9","content":[{"type":"web_search_result","url":"https://example.com","title":"Ex","encrypted_content":"abc","page_age":null}]}}

        event: content_block_stop
        data: {"type":"content_block_stop","index":1}

        event: message_delta
        data: {"type":"message_delta","delta":{"stop_reason":"stop_sequence","stop_sequence":"END"},"usage":{"output_tokens":42,"server_tool_use":{"web_search_requests":1}}}

        event: message_stop
        data: {"type":"message_stop"}


        """#

    @Test func everyUsageFieldIsKeptAndServerToolInputIsAssembled() throws {
        var accumulator = MessageAccumulator()
        for event in try AnthropicFixtures.decodeAll(Self.webSearchStream) { accumulator.apply(event) }
        let message = accumulator.message()
        #expect(message.stopReason == "stop_sequence")
        #expect(message.stopSequence == "END")
        #expect(
            message.usage.jsonValue.serializedString
                == #"{"cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":100},"cache_creation_input_tokens":100,"cache_read_input_tokens":0,"input_tokens":10,"output_tokens":42,"server_tool_use":{"web_search_requests":1},"service_tier":"standard"}"#
        )
        #expect(
            accumulator.block(at: 0)?.jsonValue.serializedString
                == #"{"id":"srvtoolu_9","input":{"n":9007199254740993,"query":"café"},"name":"web_search","type":"server_tool_use"}"#)
        #expect(accumulator.block(at: 1)?.jsonValue["type"] == "web_search_tool_result")
        #expect(accumulator.block(at: 2) == nil)
    }

    @Test func addingSumsCountsAndNestedCountsAndKeepsTheLatestOtherValue() {
        var total = AnthropicUsage(inputTokens: 0, outputTokens: 0)
        total.add(
            AnthropicUsage(
                inputTokens: 10, outputTokens: 5, cacheReadInputTokens: 3,
                other: ["server_tool_use": ["web_search_requests": 1], "service_tier": "standard"]))
        total.add(
            AnthropicUsage(
                inputTokens: 7, outputTokens: 2, cacheCreationInputTokens: 4,
                other: ["server_tool_use": ["web_search_requests": 2, "web_fetch_requests": 1], "service_tier": "priority"]))
        #expect(
            total
                == AnthropicUsage(
                    inputTokens: 17, outputTokens: 7, cacheCreationInputTokens: 4, cacheReadInputTokens: 3,
                    other: ["server_tool_use": ["web_search_requests": 3, "web_fetch_requests": 1], "service_tier": "priority"]))
    }
}
