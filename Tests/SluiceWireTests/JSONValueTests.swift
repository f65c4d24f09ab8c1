import SluiceWire
import Testing

@Suite struct JSONValueTests {
    @Test func parsesEveryKindOfValue() throws {
        let value = try JSONValue(parsing: #" { "a" : [1, -2.5, 3e2, true, false, null], "b": {"c": "d"}, "e": "" } "#)
        #expect(
            value == [
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
        "\"abc", "\"\\x\"", "\"\\u12\"", "\"a\u{1}b\"", "1 2", "[1 2]", "NaN", "Infinity", "'a'", "1e+", "1E-", "-01",
        "1e1234567890", "[0e-0000000001234567890]",
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
        let value: JSONValue = ["b": [1, 2.5, -0.0, 1e21, 123_456_789_012], "a": nil, "c": ["z": true, "y": "é\"\n\u{1}"]]
        #expect(value.serializedString == #"{"a":null,"b":[1,2.5,0,1e+21,123456789012],"c":{"y":"é\"\n\u0001","z":true}}"#)
        #expect(JSONValue.double(.infinity).serializedString == "null")
        #expect(JSONValue.double(.nan).serializedString == "null")
    }

    @Test func roundTripsThroughSerialization() throws {
        let text = #"{"content":[{"text":"hi 👋","type":"text"}],"n":-12.75,"nested":{"a":[[],{}]},"ok":false}"#
        let value = try JSONValue(parsing: text)
        #expect(value.serializedString == text)
        #expect(try JSONValue(parsing: value.serialized()) == value)
    }

    // MARK: Numbers

    @Test func numbersRoundTripExactly() throws {
        let text = #"{"id": 12345678901234567890123, "x": 1.0000000000000002, "y": -0, "z": 1e400}"#
        let value = try JSONValue(parsing: text)
        // Integers of any size come out as they went in; other numbers keep their text; `-0` is the integer 0.
        #expect(value.serializedString == #"{"id":12345678901234567890123,"x":1.0000000000000002,"y":0,"z":1e400}"#)
        #expect(value["id"]?.intValue == nil)
        #expect(value["id"]?.doubleValue == 1.2345678901234568e22)
        #expect(value["x"]?.doubleValue == 1.0000000000000002)
        #expect(value["y"] == 0)
        #expect(value["z"]?.doubleValue == .infinity)
        #expect(try JSONValue(parsing: value.serialized()) == value)
    }

    @Test(arguments: [
        "0", "-1", "9007199254740993", "-9007199254740993", "9223372036854775807", "-9223372036854775808",
        "9223372036854775808", "-9223372036854775809", "18446744073709551616", "123456789012345678901234567890",
        "0.1", "-12.75", "1.0", "2.50", "1e2", "1E+2", "1e-2", "-0.0", "0e0", "1.7976931348623157e308",
        "5e-324", "2e-400", "-1e400", "0.30000000000000000000000000000001", "1e0000000000000005",
    ])
    func parsedNumbersAreWrittenAsTheyCame(_ text: String) throws {
        #expect(try JSONValue(parsing: text).serializedString == text)
        #expect(try JSONValue(parsing: "[\(text)]").serializedString == "[\(text)]")
    }

    @Test func integersWithinInt64AreExact() throws {
        #expect(try JSONValue(parsing: "9007199254740993").intValue == 9_007_199_254_740_993)
        #expect(try JSONValue(parsing: "-9223372036854775808").intValue == Int.min)
        #expect(try JSONValue(parsing: "9223372036854775808").intValue == nil)
        #expect(try JSONValue(parsing: "-9223372036854775809").intValue == nil)
        // Integral whatever the spelling; not when there is a fraction.
        #expect(try JSONValue(parsing: "1.0").intValue == 1)
        #expect(try JSONValue(parsing: "3e2").intValue == 300)
        #expect(try JSONValue(parsing: "-25e-1").intValue == nil)
        #expect(try JSONValue(parsing: "1e30").intValue == nil)
        #expect(try JSONValue(parsing: "1e30").numberValue?.isIntegral == true)
        #expect(try JSONValue(parsing: "1.5e1").numberValue?.isIntegral == true)
        #expect(try JSONValue(parsing: "1.25e1").numberValue?.isIntegral == false)
        #expect(JSONValue.integer(UInt64.max).serializedString == "18446744073709551615")
        #expect(JSONValue.integer(Int.min).serializedString == "-9223372036854775808")
        #expect(JSONValue.integer(7).serializedString == "7")
    }

    @Test func numbersCompareByExactValue() throws {
        #expect(try JSONValue(parsing: "300") == JSONValue(parsing: "3e2"))
        #expect(try JSONValue(parsing: "300") == JSONValue(parsing: "300.000"))
        #expect(try JSONValue(parsing: "0.5") == 0.5)
        #expect(try JSONValue(parsing: "1.0e-1") == 0.1)
        #expect(try JSONValue(parsing: "-0.0") == 0)
        #expect(try JSONValue(parsing: "12345678901234567890123") == JSONValue(parsing: "1.2345678901234567890123e22"))
        // Equal as Doubles, different as numbers.
        #expect(try JSONValue(parsing: "9007199254740993") != JSONValue(parsing: "9007199254740992"))
        #expect(try JSONValue(parsing: "12345678901234567890123") != JSONValue(parsing: "12345678901234567890124"))
        #expect(try JSONValue(parsing: "0.30000000000000000000000000000001") != 0.3)
        let distinct: Set<JSONValue> = try [
            JSONValue(parsing: "300"), JSONValue(parsing: "3e2"), JSONValue(parsing: "300.0"), 300, 300.0,
            JSONValue(parsing: "1e400"), JSONValue(parsing: "10e399"),
        ]
        #expect(distinct.count == 2)
    }

    @Test func doublesAreWrittenInTheirShortestExactForm() {
        let value: JSONValue = [0.1, 1e-7, 100.0, 9007199254740992.0, 1e19, 1.7976931348623157e308, -0.0, .double(.leastNonzeroMagnitude)]
        #expect(value.serializedString == "[0.1,1e-07,100,9007199254740992,1e+19,1.7976931348623157e+308,0,5e-324]")
        #expect(JSONValue.double(0.1 + 0.2).serializedString == "0.30000000000000004")
    }

    // MARK: Strings

    @Test func escapesEveryControlCharacter() throws {
        let controls = String(decoding: (0..<0x20).map { UInt8($0) }, as: UTF8.self)
        let written = JSONValue.string(controls + "\u{7F}\"\\/").serializedString
        #expect(
            written == #""\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f"#
                + #"\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f"#
                + "\u{7F}" + #"\"\\/""#)
        #expect(try JSONValue(parsing: written) == .string(controls + "\u{7F}\"\\/"))
    }

    @Test func writesUnicodeAsUTF8() throws {
        // Non-ASCII, including characters beyond the BMP and the JavaScript line separators, is written as is.
        let text = "é ß 中文 🙂 👩‍👩‍👧 \u{2028}\u{2029} \u{FEFF}"
        let written = JSONValue.string(text).serialized()
        #expect(written == Array("\"\(text)\"".utf8))
        #expect(try JSONValue(parsing: written) == .string(text))
        // A surrogate pair escape decodes to its one scalar, written back as four UTF-8 bytes.
        #expect(try JSONValue(parsing: #""\ud83d\ude42""#).serialized() == Array("\"🙂\"".utf8))
        #expect(try JSONValue(parsing: #""\uD83D\uDE42\u00E9""#) == .string("🙂é"))
    }

    @Test(
        arguments: [
            ([0x22, 0xFF, 0x22], "\u{FFFD}"),  // a byte that never appears in UTF-8
            ([0x22, 0x61, 0xC3, 0x22], "a\u{FFFD}"),  // truncated two-byte sequence
            ([0x22, 0xC0, 0xAF, 0x22], "\u{FFFD}\u{FFFD}"),  // overlong "/"
            ([0x22, 0xED, 0xA0, 0x80, 0x22], "\u{FFFD}\u{FFFD}\u{FFFD}"),  // a surrogate encoded as UTF-8
            ([0x22, 0xF0, 0x9F, 0x99, 0x22], "\u{FFFD}"),  // truncated four-byte sequence
            ([0x22, 0x5C, 0x6E, 0xFF, 0x22], "\n\u{FFFD}"),  // after an escape (the slow path)
        ] as [([UInt8], String)])
    func replacesInvalidUTF8(_ bytes: [UInt8], _ expected: String) throws {
        let value = try JSONValue(parsing: bytes)
        #expect(value == .string(expected))
        // What is written is valid UTF-8 and reads back the same.
        #expect(try JSONValue(parsing: value.serialized()) == value)
    }

    // MARK: Structure

    @Test func nestingRoundTripsUpToTheLimit() throws {
        let deepest = String(repeating: #"{"a":["#, count: 256) + "1" + String(repeating: "]}", count: 256)
        let value = try JSONValue(parsing: deepest)
        #expect(value.serializedString == deepest)
        #expect(throws: JSONParseError.self) { try JSONValue(parsing: "[" + deepest + "]") }
    }

    @Test func parseThenWriteIsCanonical() throws {
        let text = """
            {
              "z": [ 1 , 2.50 , -3e+2 , { } , [ ] , "\\u0041\\/" ],
              "a": { "nested": { "b": true, "a": null } },
              "é": "x", "Z": "upper", "a b": 0.0
            }
            """
        let value = try JSONValue(parsing: text)
        let canonical = #"{"Z":"upper","a":{"nested":{"a":null,"b":true}},"a b":0.0,"z":[1,2.50,-3e+2,{},[],"A/"],"é":"x"}"#
        #expect(value.serializedString == canonical)
        #expect(try JSONValue(parsing: canonical) == value)
        #expect(try JSONValue(parsing: canonical).serializedString == canonical)
    }

    @Test func laterDuplicateKeysWin() throws {
        #expect(try JSONValue(parsing: #"{"a":1,"a":2}"#).serializedString == #"{"a":2}"#)
    }
}
