import SluiceUpstream
import SluiceWire

/// Events larger than this fail the stream: small, so the fuzzer reaches that path too.
private let maxEventBytes = 1024

/// Decodes the input as the body of a streamed Messages API response with `AnthropicStreamDecoder`, whole and in
/// two pieces split where the first byte says, and checks what the decoder promises: the split changes neither
/// the events nor how the stream ended (unless an event was too large, which may fail at a different event), the
/// first output is signalled once, nothing follows the end, and every event goes through the accumulator.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSSE(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let first = bytes.first else { return 0 }
    let body = Array(bytes.dropFirst())
    let cut = body.isEmpty ? 0 : Int(first) % (body.count + 1)

    var whole = AnthropicStreamDecoder(requestID: "req_fuzz", maxEventBytes: maxEventBytes)
    let wholeOutput = whole.feed(body)
    check(wholeOutput, decoder: whole)

    var split = AnthropicStreamDecoder(requestID: "req_fuzz", maxEventBytes: maxEventBytes)
    let head = split.feed(body[..<cut])
    check(head, decoder: split)
    let tail = split.feed(body[cut...])
    if head.end != nil {
        precondition(tail.events.isEmpty && tail.end == nil && !tail.progressed, "the decoder went on after the end")
    }
    check(tail, decoder: split)

    // An event can only be too large if the input is.
    if body.count <= maxEventBytes {
        precondition(wholeOutput.events == head.events + tail.events, "the split changed the events")
        precondition(whole.end == split.end, "the split changed how the stream ended")
        precondition(wholeOutput.firstOutput == (head.firstOutput || tail.firstOutput), "the split changed the first output")
        precondition(!(head.firstOutput && tail.firstOutput), "the first output was signalled twice")
    }

    let ending = whole.finish()
    if wholeOutput.end == nil, case .failed(let failure) = ending {
        precondition(failure.kind == .streamEndedEarly && failure.retryable, "a truncated stream must be retryable")
    }
    var accumulator = MessageAccumulator()
    for decoded in wholeOutput.events { accumulator.apply(decoded.event) }
    _ = accumulator.message().jsonValue.serialized()

    // The text-delta fast path answers only where the full parse gives the same index and text.
    var parser = SSEParser(maxEventBytes: maxEventBytes)
    for sse in (try? parser.feed(body)) ?? [] {
        guard let fast = AnthropicEvent.textDelta(payload: sse.data) else { continue }
        let full = fullTextDelta(sse.data)
        precondition(full?.index == fast.index && full?.text == fast.text, "the text-delta fast path disagrees with the full parse")
    }
    return 0
}

/// A `text_delta`'s index and text as the full parse reads them (`AnthropicEvent.decode`'s rules).
private func fullTextDelta(_ payload: String) -> (index: Int, text: String)? {
    guard let root = try? JSONValue(parsing: payload), let index = root["index"]?.intValue, index >= 0,
        let delta = root["delta"], delta["type"] == "text_delta", let text = delta["text"]?.stringValue
    else { return nil }
    return (index, text)
}

/// What holds for every chunk's output.
private func check(_ output: AnthropicStreamDecoder.Output, decoder: AnthropicStreamDecoder) {
    for (index, decoded) in output.events.enumerated() {
        if case .error = decoded.event { preconditionFailure("an error event was delivered") }
        if decoded.event == .messageStop {
            precondition(index == output.events.count - 1 && output.end == .complete, "events after message_stop")
        }
    }
    if output.end == .complete { precondition(output.events.last?.event == .messageStop, "complete without message_stop") }
    if let end = output.end { precondition(decoder.end == end, "the decoder's end differs from the chunk's") }
    if output.firstOutput { precondition(output.progressed, "output without progress") }
}
