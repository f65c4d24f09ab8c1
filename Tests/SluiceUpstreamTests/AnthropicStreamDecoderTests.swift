import SluiceUpstream
import SluiceWire
import Testing

@Suite struct AnthropicStreamDecoderTests {
    typealias Decoder = AnthropicStreamDecoder

    static func sse(_ event: String, _ json: String) -> String { "event: \(event)\ndata: \(json)\n\n" }

    static let messageStart = sse(
        "message_start",
        #"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-test","content":[],"usage":{"input_tokens":7,"output_tokens":1}}}"#
    )
    static let blockStart = sse(
        "content_block_start", #"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#)
    static let ping = sse("ping", #"{"type": "ping"}"#)
    static func delta(_ text: String) -> String {
        sse("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\#(text)"}}"#)
    }
    static let blockStop = sse("content_block_stop", #"{"type":"content_block_stop","index":0}"#)
    static let messageDelta = sse(
        "message_delta", #"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}"#)
    static let messageStop = sse("message_stop", #"{"type":"message_stop"}"#)

    static let stream = [messageStart, ping, blockStart, delta("Hel"), ping, delta("lo"), blockStop, messageDelta, messageStop]
    static let expectedEvents: [AnthropicEvent] = [
        .messageStart(id: "msg_1", model: "claude-test", role: "assistant", usage: AnthropicUsage(inputTokens: 7, outputTokens: 1)),
        .ping,
        .contentBlockStart(index: 0, block: .text("")),
        .contentBlockDelta(index: 0, delta: .text("Hel")),
        .ping,
        .contentBlockDelta(index: 0, delta: .text("lo")),
        .contentBlockStop(index: 0),
        .messageDelta(stopReason: "end_turn", stopSequence: nil, usage: AnthropicUsage(outputTokens: 2)),
        .messageStop,
    ]

    static func bytes(_ texts: [String]) -> [UInt8] { Array(texts.joined().utf8) }

    /// Feeds `chunks` in order; the concatenated outputs (events, signals, and where the stream ended).
    static func run(_ chunks: [[UInt8]], requestID: String? = "req_head") -> (decoder: Decoder, outputs: [Decoder.Output]) {
        var decoder = Decoder(requestID: requestID)
        let outputs = chunks.map { decoder.feed($0) }
        return (decoder, outputs)
    }

    static func isEmpty(_ output: Decoder.Output) -> Bool {
        output.events.isEmpty && !output.firstOutput && !output.progressed && output.end == nil
    }

    static func failure(_ end: Decoder.End?) -> UpstreamFailure? {
        if case .failed(let failure)? = end { failure } else { nil }
    }

    static func events(_ outputs: [Decoder.Output]) -> [AnthropicEvent] { outputs.flatMap { $0.events.map(\.event) } }

    @Test func decodesAWholeStream() {
        var decoder = Decoder(requestID: "req_head")
        let output = decoder.feed(Self.bytes(Self.stream))
        #expect(output.events.map(\.event) == Self.expectedEvents)
        #expect(output.firstOutput)
        #expect(output.progressed)
        #expect(output.end == .complete)
        #expect(decoder.end == .complete)
        #expect(decoder.finish() == .complete)
        // The size counted against the consumer's buffer: the SSE event name and data bytes.
        #expect(output.events[1].size == "ping".utf8.count + #"{"type": "ping"}"#.utf8.count)
    }

    @Test func everySplitGivesTheSameEventsAndOneFirstOutput() {
        let whole = Self.bytes(Self.stream)
        for cut in 0...whole.count {
            let (decoder, outputs) = Self.run([Array(whole[..<cut]), Array(whole[cut...])])
            #expect(Self.events(outputs) == Self.expectedEvents, "cut at \(cut)")
            #expect(outputs.filter(\.firstOutput).count == 1, "cut at \(cut)")
            #expect(decoder.end == .complete, "cut at \(cut)")
        }
        let (decoder, outputs) = Self.run(whole.map { [$0] })
        #expect(Self.events(outputs) == Self.expectedEvents)
        #expect(outputs.filter(\.firstOutput).count == 1)
        #expect(outputs.compactMap(\.end) == [.complete])
        #expect(decoder.end == .complete)
    }

    @Test func firstOutputIsTheFirstEventAfterMessageStartAndPings() {
        let (_, outputs) = Self.run([
            Self.bytes([Self.messageStart, Self.ping]), Self.bytes([Self.blockStart]), Self.bytes([Self.delta("a")]),
        ])
        #expect(outputs.map(\.firstOutput) == [false, true, false])
    }

    @Test func completePingsAloneAreNoProgress() {
        let (_, outputs) = Self.run([
            Self.bytes([Self.messageStart]), Self.bytes([Self.ping, Self.ping]), Array("event: pi".utf8),
            Array("ng\ndata: {}\n\n".utf8), Array(": keep-alive comment\n".utf8), Self.bytes([Self.ping, Self.delta("x")]),
        ])
        // message_start is progress; pings are not; bytes of an event still arriving (or a comment) are.
        #expect(outputs.map(\.progressed) == [true, false, true, false, true, true])
    }

    @Test func anErrorEventEndsTheStreamWithoutBeingDelivered() {
        let error = Self.sse("error", #"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)
        let (first, outputs) = Self.run([Self.bytes([Self.messageStart, Self.blockStart, Self.delta("Hel"), error, Self.delta("b")])])
        var decoder = first
        #expect(Self.events(outputs) == Array(Self.expectedEvents[0...0] + Self.expectedEvents[2...3]))
        let failure = UpstreamFailure.errorEvent(type: "overloaded_error", message: "Overloaded", requestID: "req_head")
        #expect(outputs[0].end == .failed(failure))
        #expect(failure.retryable)
        // Later bytes are ignored.
        #expect(Self.isEmpty(decoder.feed(Array(Self.delta("c").utf8))))
        #expect(decoder.finish() == .failed(failure))
    }

    @Test func anErrorEventsOwnRequestIDWins() throws {
        let error = Self.sse(
            "error", #"{"type":"error","error":{"type":"invalid_request_error","message":"bad"},"request_id":"req_event"}"#)
        let (decoder, _) = Self.run([Self.bytes([Self.messageStart, error])])
        let failure = try #require(Self.failure(decoder.end))
        #expect(failure.kind == .errorEvent)
        #expect(failure.errorType == "invalid_request_error")
        #expect(failure.requestID == "req_event")
        #expect(!failure.retryable)
    }

    @Test func malformedJSONIsAnInvalidResponse() throws {
        let (decoder, outputs) = Self.run([
            Self.bytes([Self.messageStart, "event: content_block_start\ndata: {not json\n\n", Self.blockStart])
        ])
        #expect(Self.events(outputs) == [Self.expectedEvents[0]])
        let failure = try #require(Self.failure(decoder.end))
        #expect(failure.kind == .invalidResponse)
        #expect(failure.message.hasPrefix("malformed Anthropic 'content_block_start' event"))
        #expect(failure.requestID == "req_head")
        #expect(!failure.retryable)
    }

    @Test func aMissingFieldIsAnInvalidResponse() throws {
        let (decoder, _) = Self.run([
            Self.bytes([Self.sse("content_block_delta", #"{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#)])
        ])
        let failure = try #require(Self.failure(decoder.end))
        #expect(failure.kind == .invalidResponse)
        #expect(failure.message.contains("'index'"))
    }

    @Test func anOversizedEventIsAMalformedStream() throws {
        var decoder = Decoder(requestID: nil, maxEventBytes: 64)
        let output = decoder.feed(Array(Self.delta(String(repeating: "x", count: 100)).utf8))
        let failure = try #require(Self.failure(output.end))
        #expect(failure.kind == .invalidResponse)
        #expect(failure.message == "malformed event stream from the Anthropic API: SSE event larger than the 64-byte limit")
        #expect(failure.requestID == nil)
        #expect(decoder.end == output.end)
    }

    @Test func aTruncatedStreamEndsEarlyAndIsRetryable() {
        let whole = Self.bytes(Self.stream)
        let (truncated, outputs) = Self.run([Array(whole.prefix(whole.count - 10))])
        var decoder = truncated
        #expect(Self.events(outputs) == Array(Self.expectedEvents.dropLast()))
        #expect(decoder.end == nil)
        let failure = UpstreamFailure(.streamEndedEarly, message: "Anthropic API stream ended before message_stop", requestID: "req_head")
        #expect(decoder.finish() == .failed(failure))
        #expect(failure.retryable)
        #expect(Self.isEmpty(decoder.feed(whole.suffix(10))))
    }

    @Test func bytesAfterMessageStopAreIgnored() {
        // Even ones that would be an error: the call is complete at message_stop.
        let trailer = "event: content_block_start\ndata: {not json\n\n"
        let (complete, outputs) = Self.run([Self.bytes(Self.stream + [trailer])])
        var decoder = complete
        #expect(Self.events(outputs) == Self.expectedEvents)
        #expect(decoder.end == .complete)
        #expect(Self.isEmpty(decoder.feed(Array(trailer.utf8))))
    }

    @Test func unknownEventsAreDeliveredAsOutput() {
        let (_, outputs) = Self.run([Self.bytes([Self.messageStart, Self.sse("future_event", "{}")])])
        #expect(Self.events(outputs).last == .unknown(event: "future_event"))
        #expect(outputs[0].firstOutput)
    }
}
