import SluiceWire

/// Inflates the input under a small limit, as a request message flagged compressed is. What inflates must
/// compress and inflate back to itself, and must be refused as too large under a limit one byte smaller.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzGzip(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let limit = 64 * 1024
    let inflated: [UInt8]
    do {
        inflated = try Gzip.decompress(UnsafeBufferPointer(start: data, count: size), limit: limit)
    } catch {
        return 0  // refused with a reason; the call would end here
    }
    precondition(inflated.count <= limit, "inflated \(inflated.count) bytes past the limit of \(limit)")
    let roundTrip = try? Gzip.decompress(Gzip.compress(inflated), limit: limit)
    precondition(roundTrip == inflated, "compressing and inflating again changed the bytes")
    if !inflated.isEmpty {
        do {
            _ = try Gzip.decompress(UnsafeBufferPointer(start: data, count: size), limit: inflated.count - 1)
            preconditionFailure("a limit below the inflated size was not enforced")
        } catch {
            precondition(error == .tooLarge(limit: inflated.count - 1), "the wrong error under a smaller limit: \(error)")
        }
    }
    return 0
}
