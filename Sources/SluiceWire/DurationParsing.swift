/// Durations on the command line and in logs: "250ms", "30s", "2m", "1.5s", or "0".
public enum DurationParsing {
    private static let units: [(suffix: String, attoseconds: Int128)] = [
        ("ms", 1_000_000_000_000_000),
        ("s", 1_000_000_000_000_000_000),
        ("m", 60_000_000_000_000_000_000),
    ]

    /// Enough whole digits for any Duration in milliseconds (about 9.2e21) while staying inside
    /// Int128; fraction digits past 18 are below an attosecond for every unit but m, and nobody types them.
    private static let maxWholeDigits = 22
    private static let maxFractionDigits = 18
    private static let durationLimit = (Int128(Int64.max) + 1) * Duration.attosecondsPerSecond

    /// An integer or decimal number (digits on both sides of any '.') followed by exactly one of
    /// ms, s, m; or "0" alone. Fractions finer than an attosecond are truncated. Nil otherwise.
    public static func parse(_ text: String) -> Duration? {
        if text == "0" { return .zero }
        // "ms" is checked before "s", which it ends with.
        guard let unit = units.first(where: { text.hasSuffix($0.suffix) }) else { return nil }
        let number = Array(text.utf8.dropLast(unit.suffix.utf8.count))
        let dot = number.firstIndex(of: UInt8(ascii: "."))
        let whole = number[..<(dot ?? number.endIndex)]
        let fraction = dot.map { number[($0 + 1)...] } ?? []
        guard (1...maxWholeDigits).contains(whole.count), dot == nil || !fraction.isEmpty,
            fraction.count <= maxFractionDigits,
            whole.allSatisfy(isDigit), fraction.allSatisfy(isDigit)
        else { return nil }
        // Checking the whole part against Duration's range first keeps the products below in Int128.
        let wholeValue = decimalValue(whole)
        guard wholeValue <= durationLimit / unit.attoseconds else { return nil }
        var scale: Int128 = 1
        for _ in fraction { scale *= 10 }
        let fractionAttoseconds = decimalValue(fraction) * unit.attoseconds / scale
        return Duration(totalAttoseconds: wholeValue * unit.attoseconds + fractionAttoseconds)
    }

    /// The largest of m, s, ms that expresses the duration exactly ("90s", not "1.5m"), a decimal
    /// number of milliseconds below that precision, and "0" for zero; `parse` reads it back.
    public static func format(_ duration: Duration) -> String {
        let total = duration.totalAttoseconds
        guard total != 0 else { return "0" }
        let sign = total < 0 ? "-" : ""
        let magnitude = total.magnitude
        for unit in units.reversed() where magnitude % unit.attoseconds.magnitude == 0 {
            return "\(sign)\(magnitude / unit.attoseconds.magnitude)\(unit.suffix)"
        }
        let perMillisecond = units[0].attoseconds.magnitude
        var fraction = String(magnitude % perMillisecond)
        fraction = String(repeating: "0", count: 15 - fraction.count) + fraction
        while fraction.hasSuffix("0") { fraction.removeLast() }
        return "\(sign)\(magnitude / perMillisecond).\(fraction)ms"
    }

    private static func decimalValue(_ digits: ArraySlice<UInt8>) -> Int128 {
        digits.reduce(0) { $0 * 10 + Int128($1 - UInt8(ascii: "0")) }
    }

    private static func isDigit(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }
}

extension Duration {
    static let attosecondsPerSecond: Int128 = 1_000_000_000_000_000_000

    /// The exact length in attoseconds. (The standard library's own accessor needs macOS 26.)
    var totalAttoseconds: Int128 {
        Int128(components.seconds) * Self.attosecondsPerSecond + Int128(components.attoseconds)
    }

    /// Whole nanoseconds (swift-metrics timers record these).
    public var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    /// Nil when the value doesn't fit in a Duration's 64-bit seconds.
    init?(totalAttoseconds: Int128) {
        let (seconds, attoseconds) = totalAttoseconds.quotientAndRemainder(dividingBy: Self.attosecondsPerSecond)
        guard let seconds = Int64(exactly: seconds) else { return nil }
        self.init(secondsComponent: seconds, attosecondsComponent: Int64(attoseconds))
    }
}
