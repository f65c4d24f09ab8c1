import SluiceUpstream
import SluiceWire

/// Parses the input as an SSE stream, whole and in two pieces split where the first byte says; both
/// must give the same events, and every event goes through the Anthropic decoder and accumulator.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSSE(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let first = bytes.first else { return 0 }
    let body = Array(bytes.dropFirst())
    var whole = SSEParser(maxEventBytes: 4096)
    var split = SSEParser(maxEventBytes: 4096)
    let cut = body.isEmpty ? 0 : Int(first) % (body.count + 1)
    let wholeEvents = try? whole.feed(body)
    var splitEvents: [SSEEvent]?
    if let head = try? split.feed(body[..<cut]), let tail = try? split.feed(body[cut...]) { splitEvents = head + tail }
    if let wholeEvents, let splitEvents {
        precondition(wholeEvents == splitEvents, "the split changed the events")
    }
    var accumulator = MessageAccumulator()
    for event in wholeEvents ?? [] {
        if let decoded = try? AnthropicEvent.decode(event) { accumulator.apply(decoded) }
    }
    _ = accumulator.message().jsonValue.serialized()
    return 0
}
