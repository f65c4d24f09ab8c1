/// A JSON number, kept exactly: what is parsed is written back with the same value, whatever its size or
/// precision (an API field or a tool input passed through comes out as it went in).
///
/// Integers that fit `Int64` are stored as integers (the common case, written without allocating); other
/// parsed numbers (fractions, exponents, integers beyond `Int64`) keep their JSON text; numbers computed in
/// Swift as `Double` are written in the shortest form that reads back as the same `Double`.
/// Equality compares exact decimal values: `300`, `3e2` and `300.0` are equal; `-0` equals `0`.
public struct JSONNumber: Sendable {
    private enum Storage: Sendable {
        case integer(Int64)
        case double(Double)
        /// Text that matched the JSON number grammar when parsed, and is not an integer within `Int64`.
        case literal(String)
    }

    private let storage: Storage

    public init(_ value: Int) { storage = .integer(Int64(value)) }

    public init(_ value: some BinaryInteger) {
        storage = Int64(exactly: value).map(Storage.integer) ?? .literal(String(value))
    }

    /// Non-finite values are written as `null`: JSON has no spelling for them.
    public init(_ value: Double) { storage = .double(value) }

    /// `text` must be a JSON number (RFC 8259 grammar); the parser checks that before calling.
    init(validatedText text: String) {
        storage = Int64(text).map(Storage.integer) ?? .literal(text)
    }

    /// The nearest `Double` (±infinity beyond its range, as for `1e400`).
    public var doubleValue: Double {
        switch storage {
        case .integer(let value): Double(value)
        case .double(let value): value
        // The grammar the parser checked is a subset of what `Double(_:)` reads.
        case .literal(let text): Double(text)!
        }
    }

    /// The value when it is an integer within `Int64`, whatever its spelling (`12`, `1.2e1`, `12.0`).
    public var int64Value: Int64? {
        switch storage {
        case .integer(let value): value
        case .double(let value): Int64(exactly: value)
        case .literal: exactDecimal?.int64Value
        }
    }

    /// True for integral values of any size: `3`, `3.0`, `1e30`.
    public var isIntegral: Bool {
        switch storage {
        case .integer: true
        case .double(let value): value.isFinite && value.rounded(.towardZero) == value
        case .literal: exactDecimal.map { $0.exponent >= 0 } ?? false
        }
    }

    /// Appends the number's JSON text.
    public func write(into out: inout [UInt8]) {
        switch storage {
        case .integer(let value):
            Self.write(value, into: &out)
        case .double(let value):
            if !value.isFinite {
                out.append(contentsOf: "null".utf8)
            } else if let integer = Int64(exactly: value) {
                // Integral doubles print as integers ("3", not "3.0"; the same value), as JavaScript does.
                Self.write(integer, into: &out)
            } else {
                out.append(contentsOf: value.description.utf8)
            }
        case .literal(let text):
            out.append(contentsOf: text.utf8)
        }
    }

    /// Decimal digits straight into `out`: `String(value)` would build a string first.
    private static func write(_ value: Int64, into out: inout [UInt8]) {
        if value < 0 { out.append(UInt8(ascii: "-")) }
        var magnitude = value.magnitude
        guard magnitude >= 10 else {
            out.append(UInt8(ascii: "0") + UInt8(magnitude))
            return
        }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for UInt64's 20 digits.
        var count = 0
        withUnsafeMutableBytes(of: &digits) { buffer in
            while magnitude > 0 {
                buffer[23 - count] = UInt8(ascii: "0") + UInt8(magnitude % 10)
                magnitude /= 10
                count += 1
            }
            out.append(contentsOf: buffer[(24 - count)...])
        }
    }

    /// The exact value as sign, significant digits and exponent; nil for a non-finite `Double`.
    private var exactDecimal: ExactDecimal? {
        switch storage {
        case .integer(let value): ExactDecimal(numberText: String(value).utf8)
        // `description` is the shortest text that reads back as the same `Double`: its value in JSON.
        case .double(let value): value.isFinite ? ExactDecimal(numberText: value.description.utf8) : nil
        case .literal(let text): ExactDecimal(numberText: text.utf8)
        }
    }
}

extension JSONNumber: Equatable, Hashable {
    public static func == (lhs: JSONNumber, rhs: JSONNumber) -> Bool {
        switch (lhs.storage, rhs.storage) {
        case (.integer(let a), .integer(let b)): a == b
        case (.double(let a), .double(let b)): a == b
        default: lhs.exactDecimal.map { $0 == rhs.exactDecimal } ?? false
        }
    }

    public func hash(into hasher: inout Hasher) {
        if let exactDecimal {
            hasher.combine(exactDecimal)
        } else {
            hasher.combine(doubleValue)
        }
    }
}

extension JSONNumber: ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral, CustomStringConvertible {
    public init(integerLiteral value: Int64) { storage = .integer(value) }
    public init(floatLiteral value: Double) { storage = .double(value) }

    /// The JSON text, as written.
    public var description: String {
        var out: [UInt8] = []
        write(into: &out)
        return String(decoding: out, as: UTF8.self)
    }
}

/// A number's exact value: `digits` × 10^`exponent`, digits without leading or trailing zeros (none at all
/// for zero, which has no sign), so equal values have equal representations.
private struct ExactDecimal: Hashable {
    var negative: Bool
    var digits: [UInt8]
    var exponent: Int

    /// Reads JSON number text (also `Double.description`'s, which may write `e+`). Exponents are limited by
    /// the parser, so the arithmetic cannot overflow.
    init(numberText text: some Collection<UInt8>) {
        var negative = false
        var digits: [UInt8] = []
        var fractionDigits = 0
        var exponent = 0
        var exponentNegative = false
        var part = 0  // 0: integer part, 1: fraction, 2: exponent
        for byte in text {
            switch byte {
            case UInt8(ascii: "-") where part == 2: exponentNegative = true
            case UInt8(ascii: "-"): negative = true
            case UInt8(ascii: "."): part = 1
            case UInt8(ascii: "e"), UInt8(ascii: "E"): part = 2
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                let digit = byte - UInt8(ascii: "0")
                if part == 2 {
                    exponent = exponent * 10 + Int(digit)
                } else if digit != 0 || !digits.isEmpty {
                    digits.append(digit)
                    if part == 1 { fractionDigits += 1 }
                } else if part == 1 {
                    fractionDigits += 1  // a leading zero of the fraction still scales the digits after it
                }
            default: break  // "+" of an exponent
            }
        }
        exponent = (exponentNegative ? -exponent : exponent) - fractionDigits
        while digits.last == 0 {
            digits.removeLast()
            exponent += 1
        }
        if digits.isEmpty {
            negative = false
            exponent = 0
        }
        self.negative = negative
        self.digits = digits
        self.exponent = exponent
    }

    var int64Value: Int64? {
        guard exponent >= 0, digits.count + exponent <= 19 else { return nil }
        var magnitude: UInt64 = 0
        for digit in digits { magnitude = magnitude * 10 + UInt64(digit) }
        for _ in 0..<exponent {
            let (scaled, overflow) = magnitude.multipliedReportingOverflow(by: 10)
            guard !overflow else { return nil }
            magnitude = scaled
        }
        return negative ? Int64(exactly: -Int128(magnitude)) : Int64(exactly: magnitude)
    }
}
