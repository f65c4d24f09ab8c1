import SluiceWire

/// Feeds the input to the envelope decoder in chunks whose sizes come from the input itself, with a
/// small message limit, and checks that what it decodes re-encodes to the same bytes.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzEnvelope(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let split = bytes.first else { return 0 }
    var decoder = EnvelopeDecoder(maxMessageSize: 1024)
    var decoded: [UInt8] = []
    var index = 1
    let step = Int(split % 17) + 1
    while index < bytes.count {
        let end = min(index + step, bytes.count)
        decoder.append(bytes[index..<end])
        index = end
        do {
            while let envelope = try decoder.next() {
                decoded += EnvelopeEncoder.encode(envelope.payload, flags: envelope.flags)
            }
        } catch {
            return 0  // a clear RPCError; the stream would end here
        }
    }
    precondition(decoded == Array(bytes[1..<(1 + decoded.count)]), "decoded envelopes do not re-encode to the input")
    return 0
}
