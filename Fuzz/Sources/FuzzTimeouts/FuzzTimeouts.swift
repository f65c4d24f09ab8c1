import SluiceWire

/// The timeout and duration parsers on arbitrary text; what grpc-timeout formatting produces must parse.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTimeouts(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    if let timeout = Timeouts.parseGRPCTimeout(text) {
        precondition(Timeouts.parseGRPCTimeout(Timeouts.formatGRPCTimeout(timeout)) != nil, "formatted timeout does not parse")
    }
    _ = Timeouts.parseConnectTimeout(text)
    if let duration = DurationParsing.parse(text) {
        precondition(DurationParsing.parse(DurationParsing.format(duration)) == duration, "duration does not round-trip")
    }
    _ = GRPCMessageEncoding.decode(text)
    precondition(GRPCMessageEncoding.decode(GRPCMessageEncoding.encode(text)) == text, "grpc-message does not round-trip")
    return 0
}
