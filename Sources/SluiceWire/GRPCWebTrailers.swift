/// gRPC-Web's status: the response's last length-prefixed frame, flagged 0x80, holding the trailers as an
/// HTTP/1 header block (PROTOCOL-WEB.md), so HTTP/1.1 and browsers, which cannot read trailers, get it.
public enum GRPCWebTrailers {
    public static let flag: UInt8 = 0x80

    /// The whole frame: `grpc-status: N\r\n`, then `grpc-message: …\r\n` (percent-encoded) unless empty.
    public static func frame(status: StatusCode, message: String) -> [UInt8] {
        var block = "grpc-status: \(status.rawValue)\r\n"
        if !message.isEmpty { block += "grpc-message: \(GRPCMessageEncoding.encode(message))\r\n" }
        return EnvelopeEncoder.encode(Array(block.utf8), flags: EnvelopeFlags(rawValue: flag))
    }
}
