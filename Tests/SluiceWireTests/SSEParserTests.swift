import Testing

@testable import SluiceWire

@Suite struct SSEParserTests {
    // MARK: Helpers

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

    struct Outcome: Equatable {
        var events: [SSEEvent]
        var lastEventID: String
        var reconnectionTime: Int?
    }

    static func parse(_ chunks: [[UInt8]], maxEventBytes: Int = 1 << 20) throws(SSEParserError) -> Outcome {
        var parser = SSEParser(maxEventBytes: maxEventBytes)
        var events: [SSEEvent] = []
        for chunk in chunks { events += try parser.feed(chunk) }
        return Outcome(events: events, lastEventID: parser.lastEventID, reconnectionTime: parser.reconnectionTime)
    }

    static func parse(_ text: String) throws -> [SSEEvent] {
        try parse([Array(text.utf8)]).events
    }

    static func randomChunks(_ bytes: [UInt8], using rng: inout SplitMix64, maxChunk: Int = 16) -> [[UInt8]] {
        var chunks: [[UInt8]] = []
        var index = 0
        while index < bytes.count {
            let size = Int.random(in: 0...maxChunk, using: &rng)
            let end = min(bytes.count, index + size)
            chunks.append(Array(bytes[index..<end]))
            index = end
        }
        return chunks
    }

    /// A direct transliteration of the WHATWG algorithm over a whole, already-decoded stream: an
    /// independent oracle for the incremental parser.
    static func reference(_ input: [UInt8]) -> Outcome {
        var bytes = input[...]
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes = bytes.dropFirst(3) }
        let scalars = Array(String(decoding: bytes, as: UTF8.self).unicodeScalars)

        var lines: [[Unicode.Scalar]] = []
        var current: [Unicode.Scalar] = []
        var i = 0
        while i < scalars.count {
            let s = scalars[i]
            if s == "\n" || s == "\r" {
                lines.append(current)
                current = []
                if s == "\r", i + 1 < scalars.count, scalars[i + 1] == "\n" { i += 1 }
            } else {
                current.append(s)
            }
            i += 1
        }

        var outcome = Outcome(events: [], lastEventID: "", reconnectionTime: nil)
        var data = ""
        var eventType = ""
        var idBuffer = ""
        var retry: Int?
        func string(_ s: some Sequence<Unicode.Scalar>) -> String {
            var view = String.UnicodeScalarView()
            view.append(contentsOf: s)
            return String(view)
        }
        for line in lines {
            if line.isEmpty {
                outcome.lastEventID = idBuffer
                if !data.isEmpty {
                    data.removeLast()
                    outcome.events.append(
                        SSEEvent(
                            event: eventType.isEmpty ? "message" : eventType, data: data,
                            id: idBuffer.isEmpty ? nil : idBuffer, retry: retry))
                }
                data = ""
                eventType = ""
                retry = nil
                continue
            }
            if line.first == ":" { continue }
            let field: String
            var value: ArraySlice<Unicode.Scalar>
            if let colon = line.firstIndex(of: ":") {
                field = string(line[..<colon])
                value = line[(colon + 1)...]
                if value.first == " " { value = value.dropFirst() }
            } else {
                field = string(line)
                value = []
            }
            switch field {
            case "data": data += string(value) + "\n"
            case "event": eventType = string(value)
            case "id": if !value.contains("\0") { idBuffer = string(value) }
            case "retry":
                if !value.isEmpty, value.allSatisfy({ ("0"..."9").contains($0) }), let n = Int(string(value)) {
                    retry = n
                    outcome.reconnectionTime = n
                }
            default: break
            }
        }
        return outcome
    }

    /// BOM, CRLF, bare CR, comments, multi-byte text, an id reset and an unterminated tail.
    static let mixedStream = Array(
        ("\u{FEFF}: hello\r\nevent: greeting\r\ndata: héllo wörld 👋\r\ndata:second line\r\nid: 7\r\n\r\n"
            + "data: no event name\rretry: 1500\r\r: ping\nevent: update\nid\ndata: {\"a\":1}\n\n"
            + "data: tail without terminator").utf8)

    static let mixedStreamEvents = [
        SSEEvent(event: "greeting", data: "héllo wörld 👋\nsecond line", id: "7"),
        SSEEvent(event: "message", data: "no event name", id: "7", retry: 1500),
        SSEEvent(event: "update", data: #"{"a":1}"#, id: nil),
    ]

    // MARK: Field rules

    @Test func parsesEventsWithDefaultsAndJoinedData() throws {
        let events = try Self.parse("event: add\ndata: 73857293\n\ndata: YHOO\ndata: +2\ndata: 10\n\n")
        #expect(
            events == [
                SSEEvent(event: "add", data: "73857293"),
                SSEEvent(event: "message", data: "YHOO\n+2\n10"),
            ])
    }

    @Test(arguments: ["\n", "\r", "\r\n"])
    func acceptsEachLineEnding(_ eol: String) throws {
        let text = ["event: e", "data: a", "data: b", "", ": c", "data: d", "", ""].joined(separator: eol)
        #expect(try Self.parse(text) == [SSEEvent(event: "e", data: "a\nb"), SSEEvent(data: "d")])
    }

    @Test func crlfSplitAcrossChunksIsOneLineEnding() throws {
        // Were the LF taken as a second line end, "a" would dispatch on its own.
        let outcome = try Self.parse([Array("data: a\r".utf8), Array("\ndata: b\r".utf8), Array("\n\r".utf8), Array("\n".utf8)])
        #expect(outcome.events == [SSEEvent(data: "a\nb")])
    }

    @Test func crAtChunkEndFollowedByCRIsABlankLine() throws {
        let outcome = try Self.parse([Array("data: a\r".utf8), Array("\r".utf8)])
        #expect(outcome.events == [SSEEvent(data: "a")])
    }

    @Test func crlfStateSurvivesEmptyChunks() throws {
        let outcome = try Self.parse([Array("data: a\r".utf8), [], [], Array("\n\n".utf8)])
        #expect(outcome.events == [SSEEvent(data: "a")])
    }

    @Test func leadingBOMIsStrippedOnceEvenWhenSplit() throws {
        let bytes: [UInt8] = [0xEF, 0xBB, 0xBF] + Array("data: x\n\n".utf8)
        #expect(try Self.parse([bytes]).events == [SSEEvent(data: "x")])
        #expect(try Self.parse(bytes.map { [$0] }).events == [SSEEvent(data: "x")])
        #expect(try Self.parse([[0xEF], [0xBB, 0xBF, 0x64], Array("ata: x\n\n".utf8)]).events == [SSEEvent(data: "x")])
        // A second BOM is part of the first field name, so that line is an unknown field.
        let twice: [UInt8] = [0xEF, 0xBB, 0xBF, 0xEF, 0xBB, 0xBF] + Array("data: x\n\ndata: y\n\n".utf8)
        #expect(try Self.parse([twice]).events == [SSEEvent(data: "y")])
    }

    @Test func bomAfterStreamStartIsNotStripped() throws {
        let bytes = Array("data: x\n".utf8) + [0xEF, 0xBB, 0xBF] + Array("data: y\n\n".utf8)
        #expect(try Self.parse([bytes]).events == [SSEEvent(data: "x")])
    }

    @Test func commentsAreIgnoredAndNeverDispatch() throws {
        let events = try Self.parse(": ping\n\n:\n\ndata: a\n: inside an event\ndata: b\n\n: tail\n")
        #expect(events == [SSEEvent(data: "a\nb")])
    }

    @Test func valueSplitsAtFirstColonAndLosesOneSpace() throws {
        let events = try Self.parse("data:x\n\ndata:  two spaces\n\ndata: a:b: c\n\ndata\n\ndata\ndata\n\n")
        #expect(
            events == [
                SSEEvent(data: "x"), SSEEvent(data: " two spaces"), SSEEvent(data: "a:b: c"),
                SSEEvent(data: ""), SSEEvent(data: "\n"),
            ])
    }

    @Test func blankLineWithEmptyDataResetsWithoutDispatching() throws {
        let events = try Self.parse("event: orphan\nretry: 5\n\ndata: x\n\n")
        #expect(events == [SSEEvent(event: "message", data: "x")])
    }

    /// The previous event name's string is reused when the next one has the same bytes, never when it differs.
    @Test func repeatedAndChangedEventNames() throws {
        let input: [UInt8] =
            Array("event: a\ndata: 1\n\nevent: a\ndata: 2\n\nevent: ab\ndata: 3\n\ndata: 4\n\nevent: a\ndata: 5\n\n".utf8)
            + Array("event: ".utf8) + [0xFF] + Array("\ndata: 6\n\nevent: \u{FFFD}\ndata: 7\n\n".utf8)
        let events = try Self.parse([input]).events
        #expect(events.map(\.event) == ["a", "a", "ab", "message", "a", "\u{FFFD}", "\u{FFFD}"])
        #expect(events.map(\.data) == ["1", "2", "3", "4", "5", "6", "7"])
    }

    @Test func unknownFieldsAreIgnored() throws {
        #expect(try Self.parse("foo: bar\nDATA: no\nData: no\ndata: yes\n\n") == [SSEEvent(data: "yes")])
    }

    @Test func idPersistsAcrossEventsAndCanBeReset() throws {
        let outcome = try Self.parse([Array("id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 2\n\n".utf8)])
        #expect(outcome.events == [SSEEvent(data: "a", id: "1"), SSEEvent(data: "b", id: "1"), SSEEvent(data: "c")])
        // An event-less block still sets the last event ID.
        #expect(outcome.lastEventID == "2")
    }

    @Test func idContainingNULIsIgnored() throws {
        let outcome = try Self.parse([Array("id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\n".utf8)])
        #expect(outcome.events == [SSEEvent(data: "a", id: "1"), SSEEvent(data: "b", id: "1")])
        #expect(outcome.lastEventID == "1")
    }

    @Test func idIsNotCommittedWithoutABlankLine() throws {
        let outcome = try Self.parse([Array("id: 1\ndata: a\n\nid: 2\ndata: b\n".utf8)])
        #expect(outcome.lastEventID == "1")
    }

    @Test func retryAcceptsOnlyASCIIDigits() throws {
        let outcome = try Self.parse([
            Array(
                ("retry: 1000\ndata: a\n\nretry: 10a\ndata: b\n\nretry: -1\nretry:  5\nretry:\nretry: ٣\n"
                    + "retry: 99999999999999999999999\ndata: c\n\nretry: 0\n\n").utf8)
        ])
        #expect(outcome.events == [SSEEvent(data: "a", retry: 1000), SSEEvent(data: "b"), SSEEvent(data: "c")])
        #expect(outcome.reconnectionTime == 0)
    }

    @Test func unterminatedLastEventIsDiscarded() throws {
        #expect(try Self.parse("data: a\n\ndata: b\n") == [SSEEvent(data: "a")])
        #expect(try Self.parse("data: a\n\ndata: b") == [SSEEvent(data: "a")])
    }

    @Test func invalidUTF8IsReplaced() throws {
        let bytes = Array("data: ".utf8) + [0xFF, 0xE2, 0x82] + Array("\n\n".utf8)
        #expect(try Self.parse([bytes]).events == [SSEEvent(data: "\u{FFFD}\u{FFFD}")])
    }

    // MARK: Size limit

    @Test func eventLargerThanTheLimitThrows() throws {
        let limit = 64
        let fits = "data: " + String(repeating: "x", count: limit - 6) + "\n\n"
        #expect(try Self.parse([Array(fits.utf8)], maxEventBytes: limit).events.count == 1)

        let manyLines = String(repeating: "data: 0123456789\n", count: 8) + "\n"
        #expect(throws: SSEParserError.eventTooLarge(limit: limit)) {
            try Self.parse([Array(manyLines.utf8)], maxEventBytes: limit)
        }
        // An endless line is caught while it is still being buffered.
        let longLine = Array(String(repeating: "y", count: 40).utf8)
        #expect(throws: SSEParserError.eventTooLarge(limit: limit)) {
            try Self.parse([longLine, longLine], maxEventBytes: limit)
        }
        #expect(SSEParserError.eventTooLarge(limit: limit).description.contains("64-byte limit"))
    }

    @Test func limitIsPerEvent() throws {
        let event = "data: " + String(repeating: "x", count: 40) + "\n\n"
        let outcome = try Self.parse([Array(String(repeating: event, count: 100).utf8)], maxEventBytes: 64)
        #expect(outcome.events.count == 100)
    }

    @Test(.timeLimit(.minutes(1)))
    func largeEventInSmallChunksIsLinear() throws {
        let payload = String(repeating: "abcdefghij", count: 90_000)
        let bytes = Array(("data: " + payload + "\n\n").utf8)
        var parser = SSEParser()
        var events: [SSEEvent] = []
        for start in stride(from: 0, to: bytes.count, by: 64) {
            events += try parser.feed(bytes[start..<min(bytes.count, start + 64)])
        }
        #expect(events == [SSEEvent(data: payload)])
    }

    // MARK: Chunking

    @Test func mixedStreamParsesAsExpected() throws {
        let outcome = try Self.parse([Self.mixedStream])
        #expect(outcome.events == Self.mixedStreamEvents)
        #expect(outcome.lastEventID == "")
        #expect(outcome.reconnectionTime == 1500)
        #expect(outcome == Self.reference(Self.mixedStream))
    }

    @Test func everySplitPointGivesTheSameEvents() throws {
        let bytes = Self.mixedStream
        let whole = try Self.parse([bytes])
        for split in 0...bytes.count {
            let outcome = try Self.parse([Array(bytes[..<split]), Array(bytes[split...])])
            #expect(outcome == whole, "split at \(split)")
        }
        #expect(try Self.parse(bytes.map { [$0] }) == whole)
    }

    @Test func everyPairOfSplitPointsGivesTheSameEvents() throws {
        let bytes = Array(Self.mixedStream.prefix(90))
        let whole = try Self.parse([bytes])
        for first in 0...bytes.count {
            for second in first...bytes.count {
                let chunks = [Array(bytes[..<first]), Array(bytes[first..<second]), Array(bytes[second...])]
                let outcome = try Self.parse(chunks)
                #expect(outcome == whole, "splits at \(first), \(second)")
                if outcome != whole { return }
            }
        }
    }

    @Test func randomChunkingsGiveTheSameEvents() throws {
        var rng = SplitMix64(state: 42)
        let whole = try Self.parse([Self.mixedStream])
        for _ in 0..<500 {
            let chunks = Self.randomChunks(Self.mixedStream, using: &rng)
            #expect(try Self.parse(chunks) == whole)
        }
    }

    @Test func feedOverloadsAgree() throws {
        let bytes = Self.mixedStream
        var fromArray = SSEParser()
        var fromSlice = SSEParser()
        var fromRaw = SSEParser()
        var fromLazy = SSEParser()
        let array = try fromArray.feed(bytes)
        let slice = try fromSlice.feed(bytes[...])
        let raw = try bytes.withUnsafeBytes { buffer throws(SSEParserError) in try fromRaw.feed(buffer) }
        // A collection without contiguous storage takes the copying path.
        let lazy = try fromLazy.feed(bytes.lazy.map { $0 })
        #expect(array == Self.mixedStreamEvents)
        #expect(slice == array && raw == array && lazy == array)
    }

    // MARK: Garbage

    static let garbageTokens: [[UInt8]] =
        [
            "data", "event", "id", "retry", ":", ": ", " ", "\r", "\n", "\r\n", "\n\n", "x", "héllo", "👋", "0", "42",
            "\0", "data: ", "event: ", "id: ", "retry: ", "::", "\t",
        ].map { Array($0.utf8) } + [[0xEF, 0xBB, 0xBF], [0xEF], [0xBB], [0xBF], [0xFF], [0xE2, 0x82], [0xC3], [0x80]]

    @Test func randomGarbageMatchesTheReferenceAndNeverCrashes() throws {
        var rng = SplitMix64(state: 0x5EED)
        for round in 0..<3000 {
            var input: [UInt8] = []
            for _ in 0..<Int.random(in: 0...80, using: &rng) {
                input += Self.garbageTokens.randomElement(using: &rng)!
            }
            let expected = Self.reference(input)
            let whole = try Self.parse([input])
            #expect(whole == expected, "round \(round): \(input)")
            let chunked = try Self.parse(Self.randomChunks(input, using: &rng, maxChunk: 7))
            #expect(chunked == expected, "round \(round) chunked: \(input)")
            if whole != expected || chunked != expected { return }
        }
    }

    @Test func randomBytesWithATightLimitNeverCrash() {
        var rng = SplitMix64(state: 7)
        for _ in 0..<2000 {
            let input = (0..<Int.random(in: 0...300, using: &rng)).map { _ in
                // Bias towards the bytes the parser treats specially.
                Bool.random(using: &rng)
                    ? [10, 13, 58, 32, 0xEF, 0xBB, 0xBF].randomElement(using: &rng)! : UInt8.random(in: 0...255, using: &rng)
            }
            var parser = SSEParser(maxEventBytes: 32)
            for chunk in Self.randomChunks(input, using: &rng) {
                do throws(SSEParserError) {
                    _ = try parser.feed(chunk)
                } catch {
                    #expect(error == .eventTooLarge(limit: 32))
                    break
                }
            }
        }
    }

    // MARK: Encoder

    @Test func encoderWritesTheExpectedBytes() {
        #expect(String(decoding: SSEEncoder.encode(event: "ping", data: "{}"), as: UTF8.self) == "event: ping\ndata: {}\n\n")
        #expect(String(decoding: SSEEncoder.encode(event: nil, data: "a\nb", id: "9"), as: UTF8.self) == "id: 9\ndata: a\ndata: b\n\n")
        #expect(String(decoding: SSEEncoder.encode(event: nil, data: ""), as: UTF8.self) == "data:\n\n")
        #expect(String(decoding: SSEEncoder.comment("ping"), as: UTF8.self) == ": ping\n")
        #expect(String(decoding: SSEEncoder.comment("a\nb"), as: UTF8.self) == ": a\n: b\n")
    }

    @Test(arguments: ["", "plain", "two\nlines", " leading space", "trailing\n", "\n", "crlf\r\nand\rcr", "ünïcödé 👋", "a:b"])
    func encoderRoundTrips(_ data: String) throws {
        let normalized = data.replacing("\r\n", with: "\n").replacing("\r", with: "\n")
        let bytes =
            SSEEncoder.encode(event: "e v", data: data, id: "id-1")
            + SSEEncoder.comment("keep-alive\nsecond") + SSEEncoder.encode(event: nil, data: "next")
        let outcome = try Self.parse([bytes])
        #expect(outcome.events == [SSEEvent(event: "e v", data: normalized, id: "id-1"), SSEEvent(data: "next", id: "id-1")])
    }

    @Test func encoderSanitizesEventAndID() throws {
        let bytes = SSEEncoder.encode(event: "bad\r\nname", data: "x", id: "a\nb\0c")
        #expect(try Self.parse([bytes]).events == [SSEEvent(event: "badname", data: "x", id: "abc")])
    }
}
