import SluiceEngine
import SluiceWire

/// Request decoding and validation: any bytes give a request or an INVALID_ARGUMENT, never a crash;
/// JSON that parses re-serializes to JSON that parses to the same value.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRequest(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    _ = try? SendMessageRequest(json: bytes)
    if let value = try? JSONValue(parsing: bytes) {
        let again = try? JSONValue(parsing: value.serialized())
        precondition(again == value || value.containsNaNOrHugeNumbers, "JSON does not survive a round trip")
    }
    return 0
}

extension JSONValue {
    /// Numbers beyond Double's exact range may print differently; they are not a round-trip failure.
    fileprivate var containsNaNOrHugeNumbers: Bool {
        switch self {
        case .number(let number): !number.isFinite || abs(number) > 9.007_199_254_740_992e15
        case .array(let values): values.contains { $0.containsNaNOrHugeNumbers }
        case .object(let members): members.values.contains { $0.containsNaNOrHugeNumbers }
        default: false
        }
    }
}
