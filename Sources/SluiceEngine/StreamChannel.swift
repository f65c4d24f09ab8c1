import SluiceWire
import Synchronization

/// The events of one stream: numbered, kept in a bounded replay buffer, and handed to the one
/// client attached at a time. The job keeps recording while no client is attached (a dropped
/// connection), so a `Resume` within the grace period continues with no gap.
public final class StreamChannel: Sendable {
    public enum Item: Sendable, Equatable {
        case event(seq: Int, bytes: [UInt8])
        /// The stream is over; nothing follows.
        case end(RPCError?)
    }

    private struct State {
        var events: [(seq: Int, bytes: [UInt8])] = []
        var head = 0
        var bufferedBytes = 0
        var nextSeq = 1
        var outcome: RPCError??
        var subscriber: (generation: Int, continuation: CheckedContinuation<Void, Never>?)?
        var generation = 0
        var detachedSince: ContinuousClock.Instant? = .now
    }

    public let streamID: String
    public let maxBufferedBytes: Int
    private let state = Mutex(State())

    public init(streamID: String, maxBufferedBytes: Int) {
        self.streamID = streamID
        self.maxBufferedBytes = maxBufferedBytes
    }

    // MARK: Producer (the job)

    /// Records an event; returns its seq.
    @discardableResult
    public func emit(_ event: StreamEvent) -> Int {
        let (waiter, seq) = state.withLock { state -> (CheckedContinuation<Void, Never>?, Int) in
            guard state.outcome == nil else { return (nil, state.nextSeq - 1) }
            let seq = state.nextSeq
            state.nextSeq += 1
            let bytes = event.encoded(streamID: streamID, seq: seq)
            state.events.append((seq, bytes))
            state.bufferedBytes += bytes.count
            // Oldest events go first; the newest is always kept.
            while state.bufferedBytes > maxBufferedBytes, state.events.count - state.head > 1 {
                state.bufferedBytes -= state.events[state.head].bytes.count
                state.head += 1
            }
            if state.head > 1024, state.head * 2 > state.events.count {
                state.events.removeFirst(state.head)
                state.head = 0
            }
            return (Self.takeWaiter(&state), seq)
        }
        waiter?.resume()
        return seq
    }

    /// Ends the stream: OK when `error` is nil.
    public func finish(_ error: RPCError?) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard state.outcome == nil else { return nil }
            state.outcome = .some(error)
            return Self.takeWaiter(&state)
        }
        waiter?.resume()
    }


    // MARK: Consumer (the attached client)

    /// Attaches a new client, detaching any previous one (its `next` returns nil).
    /// Returns the subscription generation to pass to `next` and `detach`.
    public func attach() -> Int {
        let (generation, previous) = state.withLock { state -> (Int, CheckedContinuation<Void, Never>?) in
            state.generation += 1
            let previous = state.subscriber?.continuation
            state.subscriber = (state.generation, nil)
            state.detachedSince = nil
            return (state.generation, previous)
        }
        previous?.resume()
        return generation
    }

    public func detach(_ generation: Int) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard state.subscriber?.generation == generation else { return nil }
            let waiter = state.subscriber?.continuation
            state.subscriber = nil
            state.detachedSince = .now
            return waiter
        }
        waiter?.resume()
    }

    /// Since when no client has been attached, or nil while one is.
    public var detachedSince: ContinuousClock.Instant? { state.withLock { $0.detachedSince } }

    /// What `next` would return now, without waiting.
    public enum Poll: Sendable, Equatable {
        case ready(Item)
        /// Nothing after `seq` yet: `next` would wait for the job.
        case pending
        /// This subscription was replaced or detached.
        case detached
    }

    /// The next item after `seq` if there is one already. Throws DATA_LOSS when events after
    /// `seq` were already evicted from the replay buffer.
    public func poll(after seq: Int, generation: Int) throws(RPCError) -> Poll {
        let result = state.withLock { state -> Result<Poll, RPCError> in
            guard state.subscriber?.generation == generation else { return .success(.detached) }
            if let first = state.events[safe: state.head], first.seq > seq + 1 {
                return .failure(
                    RPCError(.dataLoss, "events \(seq + 1)–\(first.seq - 1) of stream \(streamID) are no longer buffered (--replay-buffer-bytes \(maxBufferedBytes)); resume sooner or raise the limit")
                )
            }
            if seq + 1 < state.nextSeq, let first = state.events[safe: state.head] {
                let index = state.head + (seq + 1 - first.seq)
                return .success(.ready(.event(seq: state.events[index].seq, bytes: state.events[index].bytes)))
            }
            if let outcome = state.outcome { return .success(.ready(.end(outcome))) }
            return .success(.pending)
        }
        return try result.get()
    }

    /// The next item after `seq`, waiting for it if needed. Returns nil when this subscription
    /// was replaced or detached, or the task was cancelled. Throws DATA_LOSS when events after
    /// `seq` were already evicted from the replay buffer.
    public func next(after seq: Int, generation: Int) async throws(RPCError) -> Item? {
        while true {
            switch try poll(after: seq, generation: generation) {
            case .ready(let item): return item
            case .detached: return nil
            case .pending: break
            }
            if Task.isCancelled { return nil }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let resumeNow = state.withLock { state -> Bool in
                        guard state.subscriber?.generation == generation else { return true }
                        // Something may have arrived since the check above, or the task was cancelled
                        // before this continuation existed for the cancellation handler to resume.
                        if seq + 1 < state.nextSeq || state.outcome != nil || Task.isCancelled { return true }
                        state.subscriber?.continuation = continuation
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            } onCancel: {
                let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                    guard state.subscriber?.generation == generation else { return nil }
                    return Self.takeWaiter(&state)
                }
                waiter?.resume()
            }
        }
    }

    private static func takeWaiter(_ state: inout State) -> CheckedContinuation<Void, Never>? {
        let waiter = state.subscriber?.continuation
        state.subscriber?.continuation = nil
        return waiter
    }
}

extension Array {
    fileprivate subscript(safe index: Int) -> Element? {
        indices.contains(index) ? self[index] : nil
    }
}
