/// Deadline headers: gRPC's `grpc-timeout` (PROTOCOL-HTTP2.md) and Connect's `connect-timeout-ms`.
public enum Timeouts {
    /// grpc-timeout units, finest first, with their length in attoseconds.
    private static let grpcUnits: [(unit: UInt8, attoseconds: Int128)] = [
        (UInt8(ascii: "n"), 1_000_000_000),
        (UInt8(ascii: "u"), 1_000_000_000_000),
        (UInt8(ascii: "m"), 1_000_000_000_000_000),
        (UInt8(ascii: "S"), 1_000_000_000_000_000_000),
        (UInt8(ascii: "M"), 60_000_000_000_000_000_000),
        (UInt8(ascii: "H"), 3_600_000_000_000_000_000_000),
    ]
    private static let maxGRPCValue: Int128 = 99_999_999

    /// 1–8 ASCII digits then one of H M S m u n; nil for anything else (signs, spaces, 9+ digits).
    /// "0n" etc. are valid: a deadline that has already passed.
    public static func parseGRPCTimeout(_ value: String) -> Duration? {
        let bytes = value.utf8
        guard let unitByte = bytes.last,
            let unit = grpcUnits.first(where: { $0.unit == unitByte }),
            let amount = parseDigits(bytes.dropLast(), maxCount: 8)
        else { return nil }
        // At most 99999999 hours: about 3.6e11 seconds, far inside Duration's range.
        return Duration(totalAttoseconds: Int128(amount) * unit.attoseconds)
    }

    /// 1–10 ASCII digits of milliseconds; nil otherwise.
    public static func parseConnectTimeout(_ value: String) -> Duration? {
        parseDigits(value.utf8[...], maxCount: 10).map { .milliseconds($0) }
    }

    /// The finest unit whose amount fits in 8 digits, rounded up so the peer never sees a shorter
    /// deadline than asked. Non-positive durations clamp to "1n", a deadline that is already due;
    /// beyond 99999999H it saturates.
    public static func formatGRPCTimeout(_ duration: Duration) -> String {
        let total = max(duration.totalAttoseconds, 1)
        for (unit, attoseconds) in grpcUnits {
            let (quotient, remainder) = total.quotientAndRemainder(dividingBy: attoseconds)
            let amount = remainder == 0 ? quotient : quotient + 1
            if amount <= maxGRPCValue {
                return "\(amount)\(Character(Unicode.Scalar(unit)))"
            }
        }
        return "\(maxGRPCValue)H"
    }

    private static func parseDigits(_ bytes: Substring.UTF8View, maxCount: Int) -> Int64? {
        guard (1...maxCount).contains(bytes.count) else { return nil }
        var value: Int64 = 0
        for byte in bytes {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
            value = value * 10 + Int64(byte - UInt8(ascii: "0"))
        }
        return value
    }
}
