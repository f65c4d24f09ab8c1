/// The response of one `streamMessage` call, as an `AsyncSequence` of events. Iterate it once.
///
/// Backpressure: libcurl is never paused (`CURL_WRITEFUNC_PAUSE` is avoided on purpose: libcurl 7.88's HTTP/2
/// pause/unpause has known bugs — curl issues 10971, 10988, 11982). Instead the event loop parses and decodes
/// each chunk as it arrives and appends the events to this stream's buffer, which is bounded by
/// `UpstreamConfiguration.maxBufferedBytes` (8 MiB by default, counted as SSE payload bytes). Claude produces
/// tokens far slower than any live consumer reads them, so the buffer normally holds an event or two; if a
/// consumer nevertheless falls that far behind, the transfer is aborted, counted in
/// `UpstreamClient.slowConsumerAborts`, and the stream throws a retryable `.streamEndedEarly` failure saying
/// "consumer too slow" after the consumer has drained the events buffered before it.
/// Flow control towards Anthropic is therefore libcurl's and nghttp2's default window handling, never stalled by
/// a slow consumer, so one slow consumer can't hold up other streams on the same connection.
public struct UpstreamStream: AsyncSequence, Sendable {
    public typealias Element = AnthropicEvent
    public typealias Failure = UpstreamFailure

    let handle: UpstreamTransferHandle

    public func makeAsyncIterator() -> Iterator {
        Iterator(handle: handle)
    }

    /// The response's headers (lower-case names), once they have arrived: always by the time the first
    /// event is delivered or a failure other than a connection failure is thrown.
    public var responseHeaders: [(String, String)]? {
        handle.channel.responseHead?.headers
    }

    /// The response's HTTP status, once the headers have arrived.
    public var responseStatus: Int? {
        handle.channel.responseHead?.status
    }

    /// The response's `request-id` header, once the headers have arrived.
    public var requestID: String? {
        handle.channel.responseHead?.requestID
    }

    /// Aborts the transfer; the stream then throws `.cancelled` (after no further events).
    public func cancel() {
        handle.cancel()
    }

    public struct Iterator: AsyncIteratorProtocol {
        let handle: UpstreamTransferHandle

        public mutating func next() async throws(UpstreamFailure) -> AnthropicEvent? {
            try await handle.next()
        }

        public mutating func next(isolation actor: isolated (any Actor)?) async throws(UpstreamFailure)
            -> AnthropicEvent?
        {
            try await handle.next()
        }
    }
}

/// The consumer's side of one transfer. When the last stream copy and iterator are gone, the transfer is
/// cancelled: a consumer that stops iterating never leaves a transfer running.
final class UpstreamTransferHandle: Sendable {
    let multi: CurlMulti
    /// Only its identity is used here; its multi handle's event loop owns its state.
    let transfer: CurlTransfer
    let channel: UpstreamEventChannel

    init(multi: CurlMulti, transfer: CurlTransfer, channel: UpstreamEventChannel) {
        self.multi = multi
        self.transfer = transfer
        self.channel = channel
    }

    deinit {
        cancel()
    }

    func cancel() {
        if channel.cancelByConsumer() {
            multi.cancel(transfer)
        }
    }

    func next() async throws(UpstreamFailure) -> AnthropicEvent? {
        while true {
            // Cancellation wakes the wait below (`HandOff` handles it), and is acted on here: the buffered events
            // are dropped and the transfer aborted. Checked first, so a cancelled consumer gets no further event.
            if Task.isCancelled { cancel() }
            switch channel.poll() {
            case .event(let event): return event
            case .finished: return nil
            case .failed(let failure): throw failure
            case .empty: break
            }
            await channel.waitForActivity()
        }
    }
}
