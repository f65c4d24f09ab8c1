import SluiceWire
import Testing

@Suite struct OrderedJSONTests {
    @Test func keepsMembersInTheOrderWritten() {
        let value: OrderedJSON = [
            "type": "message", "id": .string("msg_\"1\""), "content": [["type": "text", "text": "hé\n"]],
            "stop_sequence": nil, "usage": ["output_tokens": .integer(12), "input_tokens": .integer(3)],
            "input": .value(["b": 1, "a": [2.5]]), "empty": .object([]),
        ]
        // Its own objects keep their order; a JSONValue inside is written as JSONValue writes it (sorted).
        #expect(
            value.serializedString == #"{"type":"message","id":"msg_\"1\"","content":[{"type":"text","text":"hé\n"}],"#
                + #""stop_sequence":null,"usage":{"output_tokens":12,"input_tokens":3},"input":{"a":[2.5],"b":1},"empty":{}}"#)
    }

    @Test func readsBackAsTheSameValue() throws {
        let value: OrderedJSON = ["z": .integer(1), "a": ["y": [], "x": "s"]]
        #expect(try JSONValue(parsing: value.serialized()) == ["a": ["x": "s", "y": []], "z": 1])
    }
}
