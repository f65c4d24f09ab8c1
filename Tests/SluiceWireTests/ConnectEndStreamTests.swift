import Foundation
import SluiceWire
import Testing

@Suite struct ConnectEndStreamTests {
    private func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    @Test func successIsEmptyObject() {
        #expect(ConnectEndStream.body(status: .ok, message: "") == Array("{}".utf8))
        #expect(ConnectEndStream.body(status: .ok, message: "ignored") == Array("{}".utf8))
    }

    @Test func errorExactBytes() {
        #expect(
            text(ConnectEndStream.body(status: .unavailable, message: "upstream is down"))
                == #"{"error":{"code":"unavailable","message":"upstream is down"}}"#)
        #expect(
            text(ConnectEndStream.body(status: .cancelled, message: "client went away"))
                == #"{"error":{"code":"canceled","message":"client went away"}}"#)
    }

    @Test func omitsEmptyMessage() {
        #expect(
            text(ConnectEndStream.body(status: .internal, message: ""))
                == #"{"error":{"code":"internal"}}"#)
    }

    @Test func metadataGroupsRepeatedKeys() {
        let body = ConnectEndStream.body(
            status: .resourceExhausted, message: "slow down",
            metadata: [("retry-after", "3"), ("x-trace", "a"), ("x-trace", "b")]
        )
        #expect(
            text(body) == #"{"error":{"code":"resource_exhausted","message":"slow down"},"#
                + #""metadata":{"retry-after":["3"],"x-trace":["a","b"]}}"#)
        #expect(
            text(ConnectEndStream.body(status: .ok, message: "", metadata: [("k", "v")]))
                == #"{"metadata":{"k":["v"]}}"#)
    }

    @Test func escapesAwkwardMessagesIntoValidJSON() throws {
        let message = "quote \" backslash \\ slash / newline \n tab \t nul \u{0} bell \u{7} café 🙂"
        let body = ConnectEndStream.body(status: .invalidArgument, message: message)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])
        let error = try #require(object["error"] as? [String: Any])
        #expect(error["code"] as? String == "invalid_argument")
        #expect(error["message"] as? String == message)
        // Control characters must never appear raw inside a JSON string.
        #expect(!body.contains { $0 < 0x20 })
        #expect(try ConnectEndStream.parse(body) == (.invalidArgument, message))
    }

    @Test func roundTripsEveryCode() throws {
        for code in StatusCode.allCases {
            let parsed = try ConnectEndStream.parse(ConnectEndStream.body(status: code, message: "m"))
            #expect(parsed.code == code)
            #expect(parsed.message == (code == .ok ? "" : "m"))
        }
    }

    @Test func parsesOtherPeersBodies() throws {
        #expect(try ConnectEndStream.parse(Array("{}".utf8)) == (.ok, ""))
        #expect(try ConnectEndStream.parse(Array(#" { "metadata" : {"a":["b"]} } "#.utf8)) == (.ok, ""))
        #expect(try ConnectEndStream.parse(Array(#"{"error":{"code":"not_found"}}"#.utf8)) == (.notFound, ""))
        let withDetails = #"{"error":{"code":"aborted","message":"m","details":[{"type":"t","value":"AA"}]}}"#
        #expect(try ConnectEndStream.parse(Array(withDetails.utf8)) == (.aborted, "m"))
        #expect(try ConnectEndStream.parse(Array(#"{"error":{"code":"bogus","message":"x"}}"#.utf8)) == (.unknown, "x"))
        #expect(try ConnectEndStream.parse(Array(#"{"error":{"code":"ok"}}"#.utf8)) == (.unknown, ""))
        #expect(
            try ConnectEndStream.parse(Array(#"{"error":{"code":"internal","message":"\u00e9\n"}}"#.utf8))
                == (.internal, "é\n"))
    }

    @Test(arguments: [
        "", "{", "[]", "null", "\"x\"", #"{"error":"x"}"#, #"{"error":{"message":"no code"}}"#,
        #"{"error":{"code":5}}"#, "{} trailing",
    ])
    func rejectsMalformedBodies(body: String) {
        do {
            _ = try ConnectEndStream.parse(Array(body.utf8))
            Issue.record("accepted \(body)")
        } catch {
            #expect(error.code == .internal)
        }
    }
}
