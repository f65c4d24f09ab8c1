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
/// (the transfer is then aborted, see `UpstreamStream`) or that the consumer is gone.
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

    private struct State {
        var events: [(event: AnthropicEvent, bytes: Int)] = []
        var head = 0
        var bufferedBytes = 0
        /// How the stream ends once `events` are drained.
        var end: Result<Void, UpstreamFailure>?
        var endDelivered = false
        var consumerCancelled = false
        var waiter: CheckedContinuation<Void, Never>?
        var responseHead: UpstreamResponseHead?

        mutating func takeWaiter() -> CheckedContinuation<Void, Never>? {
            defer { waiter = nil }
            return waiter
        }
    }

    let maxBufferedBytes: Int
    private let state = LockedValue(State())

    init(maxBufferedBytes: Int) {
        self.maxBufferedBytes = maxBufferedBytes
    }

    // MARK: Producer (event loop)

    func yield(_ event: AnthropicEvent, bytes: Int) -> YieldResult {
        let (result, waiter) = state.withLock { state -> (YieldResult, CheckedContinuation<Void, Never>?) in
            guard state.end == nil else { return (.closed, nil) }
            // One event larger than the whole budget is still accepted into an empty buffer.
            if state.bufferedBytes > 0, state.bufferedBytes + bytes > maxBufferedBytes { return (.overflow, nil) }
            state.events.append((event, bytes))
            state.bufferedBytes += bytes
            return (.accepted, state.takeWaiter())
        }
        waiter?.resume()
        return result
    }

    /// Ends the stream after the buffered events; a no-op once ended.
    func finish(_ result: Result<Void, UpstreamFailure>) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard state.end == nil else { return nil }
            state.end = result
            return state.takeWaiter()
        }
        waiter?.resume()
    }

    func setResponseHead(_ head: UpstreamResponseHead) {
        state.withLock { $0.responseHead = head }
    }

    /// The stream has ended (or its consumer left): nothing more will be delivered.
    var isClosed: Bool {
        state.withLock { $0.end != nil }
    }

    // MARK: Consumer

    var responseHead: UpstreamResponseHead? {
        state.withLock { $0.responseHead }
    }

    func poll() -> Poll {
        state.withLock { state in
            if state.head < state.events.count {
                let (event, bytes) = state.events[state.head]
                state.head += 1
                state.bufferedBytes -= bytes
                if state.head == state.events.count {
                    state.events.removeAll(keepingCapacity: state.events.capacity <= 256)
                    state.head = 0
                } else if state.head >= 1024, state.head * 2 >= state.events.count {
                    state.events.removeFirst(state.head)
                    state.head = 0
                }
                return .event(event)
            }
            guard let end = state.end else { return .empty }
            if state.endDelivered { return .finished }
            state.endDelivered = true
            switch end {
            case .success: return .finished
            case .failure(let failure): return .failed(failure)
            }
        }
    }

    /// Returns once an event or the end is available (possibly at once).
    func waitForActivity() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { state in
                if state.head < state.events.count || state.end != nil { return true }
                precondition(state.waiter == nil, "an UpstreamStream must be iterated by one task at a time")
                state.waiter = continuation
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// Drops buffered events and ends the stream with `.cancelled`. True when the transfer may still be
    /// running and must be aborted (first cancellation, before the stream ended).
    func cancelByConsumer() -> Bool {
        let (abort, waiter) = state.withLock { state -> (Bool, CheckedContinuation<Void, Never>?) in
            guard !state.consumerCancelled else { return (false, nil) }
            state.consumerCancelled = true
            state.events = []
            state.head = 0
            state.bufferedBytes = 0
            guard state.end == nil else { return (false, state.takeWaiter()) }
            state.end = .failure(UpstreamFailure(.cancelled, message: "Anthropic API call cancelled by its consumer"))
            return (true, state.takeWaiter())
        }
        waiter?.resume()
        return abort
    }
}
