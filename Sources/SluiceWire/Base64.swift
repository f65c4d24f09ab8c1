/// Standard base64 (RFC 4648 §4) for gRPC-Web's text mode, whose bodies are base64 chunks, each padded, one
/// after another: a decoder must accept padding in the middle of the stream.
public enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    public static func encode(_ bytes: some Collection<UInt8>) -> [UInt8] {
        let input = Array(bytes)
        var out: [UInt8] = []
        out.reserveCapacity((input.count + 2) / 3 * 4)
        var index = 0
        while index < input.count {
            let count = min(3, input.count - index)
            let b0 = input[index]
            let b1 = count > 1 ? input[index + 1] : 0
            let b2 = count > 2 ? input[index + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            out.append(count > 1 ? alphabet[Int((b1 & 0x0F) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(count > 2 ? alphabet[Int(b2 & 0x3F)] : UInt8(ascii: "="))
            index += 3
        }
        return out
    }

    private static let values: [Int8] = {
        var table = [Int8](repeating: -1, count: 256)
        for (value, symbol) in alphabet.enumerated() { table[Int(symbol)] = Int8(value) }
        return table
    }()

    /// Decodes base64 that may arrive in any pieces: whole groups of four are decoded as they complete.
    public struct Decoder: Sendable {
        private var group: [UInt8] = []

        public init() {}

        /// The bytes of the groups completed by `text`; nil when `text` holds a character outside the alphabet
        /// (or padding where it cannot be).
        public mutating func feed(_ text: some Collection<UInt8>) -> [UInt8]? {
            var out: [UInt8] = []
            for symbol in text {
                if symbol == 13 || symbol == 10 { continue }
                group.append(symbol)
                guard group.count == 4 else { continue }
                guard let bytes = Self.decodeGroup(group) else { return nil }
                out += bytes
                group.removeAll(keepingCapacity: true)
            }
            return out
        }

        /// True when the input ended on a group boundary.
        public var isComplete: Bool { group.isEmpty }

        private static func decodeGroup(_ group: [UInt8]) -> [UInt8]? {
            let padding = group.reversed().prefix { $0 == UInt8(ascii: "=") }.count
            guard padding <= 2 else { return nil }
            var bits: UInt32 = 0
            for (position, symbol) in group.enumerated() {
                let value: Int8 = position >= 4 - padding ? 0 : Base64.values[Int(symbol)]
                guard value >= 0 else { return nil }
                bits = bits << 6 | UInt32(value)
            }
            let bytes = [UInt8(truncatingIfNeeded: bits >> 16), UInt8(truncatingIfNeeded: bits >> 8), UInt8(truncatingIfNeeded: bits)]
            return Array(bytes.prefix(3 - padding))
        }
    }
}
