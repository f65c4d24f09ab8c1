import SluiceWire
import Testing

@Suite struct EnvelopeTests {
    private func drain(_ decoder: inout EnvelopeDecoder) throws(RPCError) -> [Envelope] {
        var messages: [Envelope] = []
        while let message = try decoder.next() { messages.append(message) }
        return messages
    }

    @Test func encodesHeaderAndPayload() {
        #expect(EnvelopeEncoder.encode(Array("hi".utf8)) == [0, 0, 0, 0, 2, 0x68, 0x69])
        #expect(EnvelopeEncoder.encode([UInt8](), flags: .endStream) == [0x02, 0, 0, 0, 0])
    }

    @Test func lengthIsBigEndian() {
        let payload = [UInt8](repeating: 7, count: 0x01_02_03)
        let encoded = EnvelopeEncoder.encode(payload)
        #expect(Array(encoded.prefix(5)) == [0, 0x00, 0x01, 0x02, 0x03])
        #expect(encoded.count == 5 + payload.count)
    }

    @Test func appendAccumulatesSeveralMessages() {
        var buffer: [UInt8] = [0xAA]
        EnvelopeEncoder.append("a".utf8, to: &buffer)
        EnvelopeEncoder.append("bc".utf8, flags: .endStream, to: &buffer)
        #expect(buffer == [0xAA, 0, 0, 0, 0, 1, 0x61, 2, 0, 0, 0, 2, 0x62, 0x63])
    }

    @Test func appendingManyMessagesGrowsGeometrically() {
        // Reserving exact capacity per append would reallocate on every call: quadratic overall.
        var buffer: [UInt8] = []
        var reallocations = 0
        for _ in 0..<100_000 {
            let capacity = buffer.capacity
            EnvelopeEncoder.append([1, 2, 3], to: &buffer)
            if buffer.capacity != capacity { reallocations += 1 }
        }
        #expect(buffer.count == 100_000 * 8)
        #expect(reallocations < 100)
    }

    @Test func roundTripsOneMessage() throws {
        var decoder = EnvelopeDecoder()
        decoder.append(EnvelopeEncoder.encode(Array(#"{"a":1}"#.utf8)))
        #expect(try decoder.next() == Envelope(payload: Array(#"{"a":1}"#.utf8)))
        #expect(try decoder.next() == nil)
        #expect(!decoder.hasPartialMessage)
    }

    @Test func decodesSeveralMessagesFromOneChunk() throws {
        var buffer: [UInt8] = []
        for text in ["one", "", "three"] { EnvelopeEncoder.append(text.utf8, to: &buffer) }
        var decoder = EnvelopeDecoder()
        decoder.append(buffer)
        #expect(try drain(&decoder).map { String(decoding: $0.payload, as: UTF8.self) } == ["one", "", "three"])
    }

    @Test func decodesAcrossEverySplitPoint() throws {
        var buffer: [UInt8] = []
        let expected = [
            Envelope(payload: Array("first".utf8)),
            Envelope(payload: []),
            Envelope(payload: Array("third message".utf8)),
            Envelope(flags: .endStream, payload: Array("{}".utf8)),
        ]
        for message in expected { EnvelopeEncoder.append(message.payload, flags: message.flags, to: &buffer) }

        for split in 0...buffer.count {
            var decoder = EnvelopeDecoder()
            decoder.append(buffer[..<split])
            var messages = try drain(&decoder)
            decoder.append(buffer[split...])
            messages += try drain(&decoder)
            #expect(messages == expected, "split at \(split)")
            #expect(!decoder.hasPartialMessage, "split at \(split)")
        }
        for first in 0...buffer.count {
            for second in first...buffer.count {
                var decoder = EnvelopeDecoder()
                var messages: [Envelope] = []
                for chunk in [buffer[..<first], buffer[first..<second], buffer[second...]] {
                    decoder.append(chunk)
                    messages += try drain(&decoder)
                }
                #expect(messages == expected, "splits at \(first), \(second)")
            }
        }
    }

    @Test func decodesByteByByte() throws {
        var buffer: [UInt8] = []
        let payloads = (0..<50).map { i in [UInt8](repeating: UInt8(i), count: i * 3) }
        for payload in payloads { EnvelopeEncoder.append(payload, to: &buffer) }
        var decoder = EnvelopeDecoder()
        var decoded: [[UInt8]] = []
        for byte in buffer {
            decoder.append(CollectionOfOne(byte))
            decoded += try drain(&decoder).map(\.payload)
        }
        #expect(decoded == payloads)
    }

    @Test func acceptsRawBufferPointers() throws {
        let bytes = EnvelopeEncoder.encode("raw".utf8)
        var decoder = EnvelopeDecoder()
        bytes.withUnsafeBytes { decoder.append(UnsafeRawBufferPointer(rebasing: $0[..<4])) }
        #expect(try decoder.next() == nil)
        bytes.withUnsafeBytes { decoder.append(UnsafeRawBufferPointer(rebasing: $0[4...])) }
        #expect(try decoder.next() == Envelope(payload: Array("raw".utf8)))
    }

    @Test func returnsEndStreamFlag() throws {
        var decoder = EnvelopeDecoder()
        decoder.append(EnvelopeEncoder.encode("{}".utf8, flags: .endStream))
        let message = try #require(try decoder.next())
        #expect(message.flags == .endStream)
        #expect(message.flags.contains(.endStream))
        #expect(!message.flags.contains(.compressed))
    }

    @Test func rejectsCompressedFlagWithoutEncodingFromHeaderAlone() {
        var decoder = EnvelopeDecoder()
        decoder.append([0x01, 0, 0, 0, 10])
        #expect(
            throws: RPCError(
                .internal,
                "a message is flagged compressed but the call declared no encoding: send grpc-encoding (or connect-content-encoding) gzip with it, or clear the flag"
            )
        ) { try decoder.next() }
    }

    @Test func inflatesGzipMessagesAndPassesUncompressedOnes() throws {
        var decoder = EnvelopeDecoder(maxMessageSize: 1024, encoding: .gzip)
        let text = Array(String(repeating: "delta ", count: 100).utf8)
        decoder.append(EnvelopeEncoder.encode(Gzip.compress(text), flags: .compressed) + EnvelopeEncoder.encode("{}".utf8))
        #expect(try decoder.next() == Envelope(payload: text))
        #expect(try decoder.next() == Envelope(payload: Array("{}".utf8)))
    }

    @Test func refusesAGzipBombWhileInflatingAndCorruptGzip() {
        var bomb = EnvelopeDecoder(maxMessageSize: 64 * 1024, encoding: .gzip)
        let zeros = Gzip.compress([UInt8](repeating: 0, count: 16 * 1024 * 1024))
        bomb.append(EnvelopeEncoder.encode(zeros, flags: .compressed))
        #expect(
            throws: RPCError(
                .resourceExhausted,
                "a \(zeros.count)-byte gzip message inflates beyond the maximum message size of 65536 bytes")
        ) { try bomb.next() }

        var corrupt = EnvelopeDecoder(encoding: .gzip)
        corrupt.append(EnvelopeEncoder.encode(Array("not gzip".utf8), flags: .compressed))
        #expect { try corrupt.next() } throws: { error in
            guard let error = error as? RPCError else { return false }
            return error.code == .invalidArgument && error.message.hasPrefix("a message flagged gzip-compressed could not be inflated: ")
        }
    }

    @Test func rejectsOversizeAsSoonAsHeaderArrives() {
        var decoder = EnvelopeDecoder(maxMessageSize: 100)
        decoder.append([0, 0, 0, 0])
        #expect(throws: Never.self) { try decoder.next() }
        decoder.append([101])
        do {
            _ = try decoder.next()
            Issue.record("expected an error")
        } catch {
            #expect(error.code == .resourceExhausted)
            #expect(error.message.contains("101"))
            #expect(error.message.contains("100"))
        }
        // Still failing on later calls: the stream can't be resynchronised.
        #expect(throws: RPCError.self) { try decoder.next() }
    }

    @Test func rejectsDefaultOversizeWithoutBufferingBody() {
        var decoder = EnvelopeDecoder()
        decoder.append([0, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(throws: RPCError.self) { try decoder.next() }
    }

    @Test func acceptsMessageExactlyAtLimit() throws {
        var decoder = EnvelopeDecoder(maxMessageSize: 4)
        decoder.append(EnvelopeEncoder.encode([1, 2, 3, 4]))
        #expect(try decoder.next()?.payload == [1, 2, 3, 4])
        decoder.append(EnvelopeEncoder.encode([1, 2, 3, 4, 5]))
        #expect(throws: RPCError.self) { try decoder.next() }
    }

    @Test func defaultLimitIsFourMiB() {
        #expect(EnvelopeDecoder.defaultMaxMessageSize == 4_194_304)
    }

    @Test func reportsPartialBody() throws {
        var decoder = EnvelopeDecoder()
        decoder.append([0, 0, 0, 0, 100] + [UInt8](repeating: 0x20, count: 12))
        #expect(try decoder.next() == nil)
        #expect(decoder.hasPartialMessage)
        #expect(
            decoder.partialMessageDescription
                == "the request ended inside a message: the length prefix announced 100 bytes but only 12 arrived")
    }

    @Test func reportsPartialHeader() throws {
        var decoder = EnvelopeDecoder()
        decoder.append(EnvelopeEncoder.encode("ok".utf8) + [0, 0, 0])
        #expect(try decoder.next()?.payload == Array("ok".utf8))
        #expect(try decoder.next() == nil)
        #expect(decoder.hasPartialMessage)
        #expect(
            decoder.partialMessageDescription
                == "the request ended inside a message header: only 3 of its 5 bytes arrived")
    }

    @Test func noPartialMessageWhenEmptyOrDrained() throws {
        var decoder = EnvelopeDecoder()
        #expect(!decoder.hasPartialMessage)
        #expect(decoder.partialMessageDescription == nil)
        decoder.append(EnvelopeEncoder.encode("x".utf8))
        #expect(try decoder.next() != nil)
        #expect(!decoder.hasPartialMessage)
        #expect(decoder.partialMessageDescription == nil)
    }

    @Test func manyMessagesInterleavedWithPartialsStayCorrect() throws {
        // Exercises compaction: consumed bytes are dropped while an unread tail is kept.
        var decoder = EnvelopeDecoder()
        var expected: [[UInt8]] = []
        var decoded: [[UInt8]] = []
        var pending: [UInt8] = []
        for i in 0..<2_000 {
            let payload = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: (i * 37) % 301)
            expected.append(payload)
            EnvelopeEncoder.append(payload, to: &pending)
            let cut = pending.count - (i % 7)
            decoder.append(pending[..<cut])
            pending.removeSubrange(..<cut)
            decoded += try drain(&decoder).map(\.payload)
        }
        decoder.append(pending)
        decoded += try drain(&decoder).map(\.payload)
        #expect(decoded == expected)
        #expect(!decoder.hasPartialMessage)
    }

    @Test func largeBufferOfSmallMessagesIsLinear() throws {
        // 200k messages in one chunk: removeFirst per message would take minutes here.
        var buffer: [UInt8] = []
        for _ in 0..<200_000 { EnvelopeEncoder.append([1, 2, 3], to: &buffer) }
        var decoder = EnvelopeDecoder()
        decoder.append(buffer)
        let clock = ContinuousClock()
        var count = 0
        let elapsed = try clock.measure {
            while try decoder.next() != nil { count += 1 }
        }
        #expect(count == 200_000)
        #expect(elapsed < .seconds(5))
    }
}
