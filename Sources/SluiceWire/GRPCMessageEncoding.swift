/// The percent-encoding gRPC requires for the `grpc-message` trailer (PROTOCOL-HTTP2.md):
/// header values must be printable ASCII, so everything else travels as %XX of its UTF-8 bytes.
public enum GRPCMessageEncoding {
    private static let hexDigits = Array("0123456789ABCDEF".utf8)
    private static let percent = UInt8(ascii: "%")

    /// Bytes 0x20–0x7E except '%' pass through; all others become %XX (uppercase hex).
    public static func encode(_ message: String) -> String {
        let utf8 = message.utf8
        guard utf8.contains(where: needsEscaping) else { return message }
        var out: [UInt8] = []
        out.reserveCapacity(utf8.count * 3)
        for byte in utf8 {
            if needsEscaping(byte) {
                out.append(percent)
                out.append(hexDigits[Int(byte >> 4)])
                out.append(hexDigits[Int(byte & 0x0F)])
            } else {
                out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Lenient by design (a peer's bad trailer must not hide its status): a '%' not followed by
    /// two hex digits is kept literally, and invalid UTF-8 becomes U+FFFD.
    public static func decode(_ value: String) -> String {
        let bytes = Array(value.utf8)
        guard bytes.contains(percent) else { return value }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            if bytes[i] == percent, i + 2 < bytes.count,
                let high = hexValue(bytes[i + 1]), let low = hexValue(bytes[i + 2])
            {
                out.append(high << 4 | low)
                i += 3
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func needsEscaping(_ byte: UInt8) -> Bool {
        byte < 0x20 || byte > 0x7E || byte == percent
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        default: nil
        }
    }
}
