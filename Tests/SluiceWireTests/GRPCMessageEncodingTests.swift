import SluiceWire
import Testing

@Suite struct GRPCMessageEncodingTests {
    @Test func printableASCIIPassesThrough() {
        let text = #"model "x" isn't available: try again (code 42) ~!@#$^&*[]{}\|"#
        #expect(GRPCMessageEncoding.encode(text) == text)
        #expect(GRPCMessageEncoding.encode("") == "")
    }

    @Test func escapesPercentControlsAndNonASCII() {
        #expect(GRPCMessageEncoding.encode("100%") == "100%25")
        #expect(GRPCMessageEncoding.encode("a\nb\tc\r") == "a%0Ab%09c%0D")
        #expect(GRPCMessageEncoding.encode("\u{7F}\u{1F}") == "%7F%1F")
        #expect(GRPCMessageEncoding.encode("café") == "caf%C3%A9")
        #expect(GRPCMessageEncoding.encode("日本") == "%E6%97%A5%E6%9C%AC")
        #expect(GRPCMessageEncoding.encode("🙂") == "%F0%9F%99%82")
    }

    @Test func boundaryBytes() {
        #expect(GRPCMessageEncoding.encode(" ") == " ")
        #expect(GRPCMessageEncoding.encode("~") == "~")
        #expect(GRPCMessageEncoding.encode("\u{00}") == "%00")
    }

    @Test func roundTrips() {
        for text in ["", "plain", "100% sure", "%%", "%41", "naïve 日本語 🙂\n\u{0}end", "tab\there %zz"] {
            let encoded = GRPCMessageEncoding.encode(text)
            #expect(encoded.utf8.allSatisfy { (0x20...0x7E).contains($0) }, "\(encoded)")
            #expect(GRPCMessageEncoding.decode(encoded) == text)
        }
    }

    @Test func decodesBothHexCases() {
        #expect(GRPCMessageEncoding.decode("caf%c3%a9") == "café")
        #expect(GRPCMessageEncoding.decode("caf%C3%A9") == "café")
        #expect(GRPCMessageEncoding.decode("%41%42") == "AB")
    }

    @Test func keepsMalformedSequencesLiterally() {
        #expect(GRPCMessageEncoding.decode("100%") == "100%")
        #expect(GRPCMessageEncoding.decode("%4") == "%4")
        #expect(GRPCMessageEncoding.decode("%zz%41") == "%zzA")
        #expect(GRPCMessageEncoding.decode("%%41") == "%A")
        #expect(GRPCMessageEncoding.decode("%G1 ok") == "%G1 ok")
    }

    @Test func repairsInvalidUTF8() {
        #expect(GRPCMessageEncoding.decode("a%FFb") == "a\u{FFFD}b")
        #expect(GRPCMessageEncoding.decode("%C3") == "\u{FFFD}")
    }
}
