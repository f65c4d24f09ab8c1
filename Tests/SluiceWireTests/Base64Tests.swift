import SluiceWire
import Testing

@Suite struct Base64Tests {
    @Test func encodesWithPaddingAndDecodesInAnyPieces() {
        let cases: [(String, String)] = [
            ("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="),
        ]
        for (plain, encoded) in cases {
            #expect(Base64.encode(Array(plain.utf8)) == Array(encoded.utf8))
            var decoder = Base64.Decoder()
            var out: [UInt8] = []
            for byte in encoded.utf8 { out += decoder.feed([byte]) ?? [0xFF] }
            #expect(out == Array(plain.utf8))
            #expect(decoder.isComplete)
        }
    }

    @Test func decodesPaddedChunksOneAfterAnother() {
        var decoder = Base64.Decoder()
        #expect(decoder.feed(Array("Zg==Zm8=Zm9v".utf8)) == Array("ffofoo".utf8))
    }

    @Test func refusesCharactersOutsideTheAlphabetAndMisplacedPadding() {
        var bad = Base64.Decoder()
        #expect(bad.feed(Array("Zm9!".utf8)) == nil)
        var padding = Base64.Decoder()
        #expect(padding.feed(Array("Z===".utf8)) == nil)
        var partial = Base64.Decoder()
        #expect(partial.feed(Array("Zm9".utf8)) == [])
        #expect(!partial.isComplete)
    }

    @Test func grpcWebTrailerFrame() {
        let frame = GRPCWebTrailers.frame(status: .invalidArgument, message: "bad 100%")
        let block = "grpc-status: 3\r\ngrpc-message: bad 100%25\r\n"
        #expect(frame == [0x80, 0, 0, 0, UInt8(block.utf8.count)] + Array(block.utf8))
        #expect(Array(GRPCWebTrailers.frame(status: .ok, message: "").dropFirst(5)) == Array("grpc-status: 0\r\n".utf8))
    }
}
