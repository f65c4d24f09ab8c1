import SluiceWire
import Testing

@Suite struct GzipTests {
    @Test func compressesAndInflatesBack() throws {
        let text = Array(String(repeating: "Sluice streams Claude's answers. ", count: 200).utf8)
        let compressed = Gzip.compress(text)
        #expect(compressed.count < text.count / 10)
        #expect(Array(compressed.prefix(2)) == [0x1F, 0x8B], "a gzip member, not a zlib stream")
        #expect(try Gzip.decompress(compressed, limit: text.count) == text)
        #expect(try Gzip.decompress(Gzip.compress([]), limit: 0) == [])
    }

    @Test func stopsInflatingAtTheLimit() {
        // 1 GiB of zeros would be about 1 MiB compressed; 64 MiB of them make the same point faster.
        let compressed = Gzip.compress([UInt8](repeating: 0, count: 64 * 1024 * 1024))
        #expect(throws: Gzip.InflateError.tooLarge(limit: 1024 * 1024)) { try Gzip.decompress(compressed, limit: 1024 * 1024) }
        let exact = Gzip.compress([UInt8](repeating: 7, count: 1000))
        #expect(throws: Gzip.InflateError.tooLarge(limit: 999)) { try Gzip.decompress(exact, limit: 999) }
        #expect((try? Gzip.decompress(exact, limit: 1000))?.count == 1000)
    }

    @Test func refusesWhatIsNotOneWholeGzipMember() {
        let member = Gzip.compress(Array("hello, hello, hello".utf8))
        let cases: [([UInt8], String)] = [
            (Array("plain text".utf8), "not valid gzip data"),
            (Array(member.dropLast(4)), "the gzip stream ends early (truncated)"),
            (member + [0], "1 bytes follow the end of the gzip stream"),
            ([], "the gzip stream ends early (truncated)"),
        ]
        for (input, reason) in cases {
            #expect {
                try Gzip.decompress(input, limit: 1024)
            } throws: { error in
                guard case .malformed(let message) = error as? Gzip.InflateError else { return false }
                return message.hasPrefix(reason)
            }
        }
    }
}

@Suite struct MessageEncodingTests {
    typealias Negotiation = EncodingNegotiation

    @Test func requestEncodingIsIdentityOrGzipAndAnythingElseIsUnimplemented() throws {
        #expect(try Negotiation.negotiate(encoding: nil, acceptEncoding: nil, headers: .grpc) == Negotiation())
        #expect(try Negotiation.negotiate(encoding: "gzip", acceptEncoding: nil, headers: .grpc).request == .gzip)
        #expect(try Negotiation.negotiate(encoding: " Identity ", acceptEncoding: nil, headers: .grpc).request == .identity)
        #expect(
            throws: RPCError(
                .unimplemented,
                "connect-content-encoding 'br' is not supported: send gzip or identity (connect-accept-encoding: gzip,identity)")
        ) { try Negotiation.negotiate(encoding: "br", acceptEncoding: nil, headers: .connectStreaming) }
    }

    @Test func responsesUseGzipOnlyWhenTheClientAcceptsIt() throws {
        let cases: [(String?, MessageEncoding)] = [
            (nil, .identity), ("identity", .identity), ("identity,deflate,gzip", .gzip), ("br, GZIP", .gzip),
            ("gzip;q=0.5", .gzip), ("gzip; q=0", .identity), ("gzip;q=0.000", .identity), ("deflate", .identity),
        ]
        for (accept, expected) in cases {
            #expect(
                try Negotiation.negotiate(encoding: nil, acceptEncoding: accept, headers: .grpc).response == expected, "\(accept ?? "nil")")
        }
    }

    @Test func onlyMessagesAtLeastTheMinimumAndThatShrinkAreCompressed() throws {
        let text = Array(String(repeating: "text delta ", count: 200).utf8)
        #expect(MessageEncoding.identity.compressed(text, minBytes: 0) == nil)
        #expect(MessageEncoding.gzip.compressed(text, minBytes: text.count + 1) == nil)
        let compressed = try #require(MessageEncoding.gzip.compressed(text, minBytes: text.count))
        #expect(try Gzip.decompress(compressed, limit: text.count) == text)
        // Already-compressed bytes grow under gzip: they are sent as they are.
        #expect(MessageEncoding.gzip.compressed(compressed, minBytes: 0) == nil)
    }
}
