import SluiceEngine
import SluiceWire

/// Request decoding and validation: any bytes give a request or an INVALID_ARGUMENT, never a crash.
/// JSON that parses round-trips exactly: it re-serializes to JSON that parses to the same value (numbers
/// included, at any size or precision), and writing that again gives the same bytes.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRequest(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    _ = try? SendMessageRequest(json: bytes)
    if let value = try? JSONValue(parsing: bytes) {
        let written = value.serialized()
        let again = try? JSONValue(parsing: written)
        precondition(again == value, "JSON does not survive a round trip")
        precondition(again?.serialized() == written, "JSON written twice differs")
    }
    return 0
}
