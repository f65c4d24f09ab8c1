import SluiceIO

/// A response's status line and headers.
struct UpstreamResponseHead: Sendable {
    var status: Int
    /// Lower-case names, in arrival order.
    var headers: [(String, String)]

    var requestID: String? {
        headers.first { $0.0 == "request-id" }?.1
    }
}

/// The bounded hand-off between the multi handle's event loop (producer) and one consumer.
///
/// The producer never blocks: `yield` either accepts an event or reports that the buffer is over its byte budget
/// (the transfer is then aborted, see `UpstreamStream`) or that the consumer is gone. The parking, waking and
/// cancellation of the consumer task are `HandOff`'s; the budget and the ending are this type's.
final class UpstreamEventChannel: Sendable {
    enum Poll {
        case event(AnthropicEvent)
        case finished
        case failed(UpstreamFailure)
        case empty
    }

    enum YieldResult {
        case accepted
        /// Over `maxBufferedBytes`: the event was not taken.
        case overflow
        /// The consumer is gone or the stream already ended.
        case closed
    }

    private struct Events: Sendable {
        var events: [(event: AnthropicEvent, bytes: Int)] = []
        var head = 0
        /// How the stream ends once `events` are drained.
        var end: Result<Void, UpstreamFailure>?
        var endDelivered = false
        var consumerCancelled = false
        var responseHead: UpstreamResponseHead?
        /// A buffered call's body, set before its successful end.
        var responseBody: [UInt8] = []
    }

    let maxBufferedBytes: Int
    /// The load is the buffered events' bytes; the producer never waits, so its thresholds are unused.
    private let handOff: HandOff<Events>

    init(maxBufferedBytes: Int) {
        self.maxBufferedBytes = maxBufferedBytes
        handOff = HandOff(
            Events(), machine: HandOffStateMachine(capacity: maxBufferedBytes, producerResumesAt: maxBufferedBytes)
        )
    }

    // MARK: Producer (event loop)

    func yield(_ event: AnthropicEvent, bytes: Int) -> YieldResult {
        handOff.withLock { state, wakeups in
            guard state.buffer.end == nil else { return .closed }
            // One event larger than the whole budget is still accepted into an empty buffer.
            let buffered = state.machine.load
            if buffered > 0, buffered + bytes > maxBufferedBytes { return .overflow }
            state.buffer.events.append((event, bytes))
            _ = state.machine.add(bytes)
            wakeups.merge(state.machine.wakeConsumer())
            return .accepted
        }
    }

    /// Ends the stream after the buffered events; a no-op once ended.
    func finish(_ result: Result<Void, UpstreamFailure>) {
        handOff.withLock { state, wakeups in
            guard state.buffer.end == nil else { return }
            state.buffer.end = result
            if let finished = state.machine.finish() { wakeups.merge(finished) }
        }
    }

    func setResponseHead(_ head: UpstreamResponseHead) {
        handOff.withLock { state, _ in state.buffer.responseHead = head }
    }

    func setResponseBody(_ body: [UInt8]) {
        handOff.withLock { state, _ in state.buffer.responseBody = body }
    }

    /// The stream has ended (or its consumer left): nothing more will be delivered.
    var isClosed: Bool {
        handOff.withLock { state, _ in state.buffer.end != nil }
    }

    // MARK: Consumer

    var responseHead: UpstreamResponseHead? {
        handOff.withLock { state, _ in state.buffer.responseHead }
    }

    var responseBody: [UInt8] {
        handOff.withLock { state, _ in state.buffer.responseBody }
    }

    func poll() -> Poll {
        handOff.withLock { state, wakeups in
            if state.buffer.head < state.buffer.events.count {
                let (event, bytes) = state.buffer.events[state.buffer.head]
                state.buffer.head += 1
                wakeups.merge(state.machine.remove(bytes))
                if state.buffer.head == state.buffer.events.count {
                    state.buffer.events.removeAll(keepingCapacity: state.buffer.events.capacity <= 256)
                    state.buffer.head = 0
                } else if state.buffer.head >= 1024, state.buffer.head * 2 >= state.buffer.events.count {
                    state.buffer.events.removeFirst(state.buffer.head)
                    state.buffer.head = 0
                }
                return .event(event)
            }
            guard let end = state.buffer.end else { return .empty }
            if state.buffer.endDelivered { return .finished }
            state.buffer.endDelivered = true
            switch end {
            case .success: return .finished
            case .failure(let failure): return .failed(failure)
            }
        }
    }

    /// Returns once an event or the end is available (possibly at once), or the task is cancelled.
    func waitForActivity() async {
        await handOff.waitAsConsumer { state in
            state.buffer.head < state.buffer.events.count || state.buffer.end != nil
        }
    }

    /// Drops buffered events and ends the stream with `.cancelled`. True when the transfer may still be
    /// running and must be aborted (first cancellation, before the stream ended).
    func cancelByConsumer() -> Bool {
        handOff.withLock { state, wakeups in
            guard !state.buffer.consumerCancelled else { return false }
            state.buffer.consumerCancelled = true
            state.buffer.events = []
            state.buffer.head = 0
            wakeups.merge(state.machine.setLoad(0))
            if let closed = state.machine.close(failingProducerWith: .success(())) { wakeups.merge(closed) }
            guard state.buffer.end == nil else { return false }
            state.buffer.end = .failure(UpstreamFailure(.cancelled, message: "Anthropic API call cancelled by its consumer"))
            return true
        }
    }
}
