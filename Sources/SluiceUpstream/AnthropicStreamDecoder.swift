import SluiceWire

/// Decodes the body of a successful (2xx) streamed Messages API response: bytes in, Anthropic events and the
/// signals the transfer's deadline policy acts on out.
///
/// A state machine with no I/O and no clock. `CurlTransfer` feeds it what libcurl delivers and keeps the I/O,
/// deadlines and backpressure; the tests and the FuzzSSE fuzzer drive it directly.
///
/// States: streaming (`end == nil`) → `.complete` (at `message_stop`) or `.failed` (malformed event stream,
/// malformed event, `error` event, or `finish()` before `message_stop`). Once ended, it ignores every byte.
public struct AnthropicStreamDecoder: Sendable {
    public enum End: Sendable, Equatable {
        /// `message_stop` arrived: the call is complete, whatever follows (normally nothing) is ignored.
        case complete
        case failed(UpstreamFailure)
    }

    /// One event and what it counts for against the consumer's buffer budget (its SSE name and data bytes).
    public struct DecodedEvent: Sendable, Equatable {
        public var event: AnthropicEvent
        public var size: Int
    }

    /// What one chunk of bytes produced.
    public struct Output: Sendable, Equatable {
        /// In stream order, `ping`s included. Never an `error` event: that ends the stream (`end`) instead.
        public var events: [DecodedEvent] = []
        /// The model's first output is in this chunk: the stream's first event other than `message_start`,
        /// `ping` and `error`. Until then the first-byte timeout applies, afterwards the idle timeout.
        public var firstOutput = false
        /// The stream moved forward: the chunk holds part of an event still arriving, or a complete event other
        /// than `ping`. Complete pings alone are no progress, so a stream kept open by pings still times out.
        public var progressed = false
        /// Set in the chunk that ended the stream; `.complete` comes with `message_stop` as the last event.
        public var end: End?
    }

    /// The response's `request-id`, for failures whose event names none.
    public let requestID: String?
    public private(set) var end: End?
    private var parser: SSEParser
    private var sawOutput = false

    public init(requestID: String?, maxEventBytes: Int = 1 << 20) {
        self.requestID = requestID
        parser = SSEParser(maxEventBytes: maxEventBytes)
    }

    public mutating func feed(_ bytes: some Collection<UInt8>) -> Output {
        let output = bytes.withContiguousStorageIfAvailable { buffer in feed(UnsafeRawBufferPointer(buffer)) }
        return output ?? feed(Array(bytes))
    }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) -> Output {
        var output = Output()
        guard end == nil else { return output }
        let sseEvents: [SSEEvent]
        do throws(SSEParserError) {
            sseEvents = try parser.feed(bytes)
        } catch {
            fail(
                UpstreamFailure(
                    .invalidResponse, message: "malformed event stream from the Anthropic API: \(error)", requestID: requestID
                ), &output)
            return output
        }
        // Bytes that complete no event belong to one still arriving.
        output.progressed = sseEvents.isEmpty
        for sse in sseEvents {
            let event: AnthropicEvent
            do throws(AnthropicDecodingError) {
                event = try AnthropicEvent.decode(sse)
            } catch {
                fail(UpstreamFailure(.invalidResponse, message: error.description, requestID: requestID), &output)
                return output
            }
            switch event {
            case .ping:
                break
            case .messageStart:
                // Sent as soon as the request is accepted; the model's first output may come far later.
                output.progressed = true
            case .error(let type, let message, let eventRequestID):
                fail(.errorEvent(type: type, message: message, requestID: eventRequestID ?? requestID), &output)
                return output
            default:
                output.progressed = true
                if !sawOutput {
                    sawOutput = true
                    output.firstOutput = true
                }
            }
            output.events.append(DecodedEvent(event: event, size: sse.data.utf8.count + sse.event.utf8.count))
            if event == .messageStop {
                end = .complete
                output.end = .complete
                return output
            }
        }
        return output
    }

    /// The response body ended. Before `message_stop` that is a truncated stream (retryable).
    public mutating func finish() -> End {
        if let end { return end }
        let truncated = End.failed(
            UpstreamFailure(
                .streamEndedEarly, message: "Anthropic API stream ended before message_stop", requestID: requestID
            ))
        end = truncated
        return truncated
    }

    private mutating func fail(_ failure: UpstreamFailure, _ output: inout Output) {
        end = .failed(failure)
        output.end = .failed(failure)
    }
}
