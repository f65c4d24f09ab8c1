import Foundation
import Testing
import SluiceWire

@Suite struct JSONValueTests {
    @Test func parsesEveryKindOfValue() throws {
        let value = try JSONValue(parsing: #" { "a" : [1, -2.5, 3e2, true, false, null], "b": {"c": "d"}, "e": "" } "#)
        #expect(value == [
            "a": [1, -2.5, 300, true, false, nil],
            "b": ["c": "d"],
            "e": "",
        ])
        #expect(value["a"]?.arrayValue?.first?.intValue == 1)
        #expect(value["a"]?.arrayValue?[1].intValue == nil)
        #expect(value["b"]?["c"]?.stringValue == "d")
        #expect(value["missing"] == nil)
    }

    @Test func decodesStringEscapes() throws {
        let value = try JSONValue(parsing: #""q\" b\\ s\/ \b\f\n\r\t \u00e9 \ud83d\udc4b lone \ud800 x \udc00""#)
        #expect(value == .string("q\" b\\ s/ \u{8}\u{C}\n\r\t é 👋 lone \u{FFFD} x \u{FFFD}"))
        #expect(try JSONValue(parsing: #""\ud83d\u0041""#) == .string("\u{FFFD}A"))
    }

    @Test(arguments: [
        "", " ", "{", "}", "[1,]", "{\"a\":1,}", "{\"a\"}", "{1:2}", "01", "1.", ".5", "-", "1e", "+1", "tru", "nul",
        "\"abc", "\"\\x\"", "\"\\u12\"", "\"a\u{1}b\"", "1 2", "[1 2]", "NaN", "Infinity", "1e400", "'a'",
    ])
    func rejectsInvalidJSON(_ text: String) {
        #expect(throws: JSONParseError.self) { try JSONValue(parsing: text) }
    }

    @Test func limitsNestingDepth() throws {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(throws: JSONParseError.self) { try JSONValue(parsing: deep) }
        let fine = String(repeating: "[", count: 500) + String(repeating: "]", count: 500)
        #expect(throws: Never.self) { try JSONValue(parsing: fine) }
    }

    @Test func errorSaysWhere() {
        let error = #expect(throws: JSONParseError.self) { try JSONValue(parsing: "[1, 2 3]") }
        #expect(error?.offset == 6)
        #expect(error?.description == "invalid JSON at byte 6: expected ',' or ']'")
    }

    @Test func serializesCompactlyWithSortedKeys() {
        let value: JSONValue = ["b": [1, 2.5, -0.0, 1e21, 123456789012], "a": nil, "c": ["z": true, "y": "é\"\n\u{1}"]]
        #expect(value.serializedString == #"{"a":null,"b":[1,2.5,0,1e+21,123456789012],"c":{"y":"é\"\n\u0001","z":true}}"#)
        #expect(JSONValue.number(.infinity).serializedString == "null")
    }

    @Test func roundTripsThroughSerialization() throws {
        let text = #"{"content":[{"text":"hi 👋","type":"text"}],"n":-12.75,"nested":{"a":[[],{}]},"ok":false}"#
        let value = try JSONValue(parsing: text)
        #expect(value.serializedString == text)
        #expect(try JSONValue(parsing: value.serialized()) == value)
    }

    @Test func codableMatchesFoundation() throws {
        let text = #"{"a":[1,2.5,"s",true,null,{"b":false}]}"#
        let decoded = try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
        #expect(decoded == (try JSONValue(parsing: text)))
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let reencoded = try JSONDecoder().decode(JSONValue.self, from: encoder.encode(decoded))
        #expect(reencoded == decoded)
    }
}
