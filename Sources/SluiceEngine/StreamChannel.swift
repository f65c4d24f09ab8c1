import SluiceIO
import SluiceWire

/// Takes an attached client's events without waiting: the fast path from the job to the client.
public protocol StreamEventSink: Sendable {
    /// Queues `bytes` for the client if that is possible at once; false when the client is not keeping up
    /// (or is gone), and the subscriber's task then delivers the event itself, waiting as needed.
    /// `emittedAt`: when the job emitted the event (what delivery latency is measured from).
    func offer(_ bytes: [UInt8], emittedAt: ContinuousClock.Instant) -> Bool
}

/// The events of one stream: numbered, kept in a bounded replay buffer, and handed to the one
/// client attached at a time. The job keeps recording while no client is attached (a dropped
/// connection), so a `Resume` within the grace period continues with no gap.
///
/// A subscriber with a sink gets each new event pushed into it by `emit` while its task is parked
/// in `next` with nothing left to deliver, so the common case costs no task switch per event.
public final class StreamChannel: Sendable {
    public enum Item: Sendable, Equatable {
        /// `emittedAt`: when the job emitted it.
        case event(seq: Int, bytes: [UInt8], emittedAt: ContinuousClock.Instant)
        /// The stream is over; nothing follows.
        case end(RPCError?)
    }

    private struct State {
        var events: [(seq: Int, bytes: [UInt8], emittedAt: ContinuousClock.Instant)] = []
        var head = 0
        var bufferedBytes = 0
        var nextSeq = 1
        var outcome: RPCError??
        var subscriber: Subscriber?
        var generation = 0
        var detachedSince: ContinuousClock.Instant? = .now
        /// The job, waiting in `waitForReader` for the attached client to catch up.
        var producerWaiter: CheckedContinuation<Void, Never>?

        /// Takes the producer's continuation if the client has caught up enough (or is gone).
        mutating func producerMayGo(threshold: Int) -> CheckedContinuation<Void, Never>? {
            guard producerWaiter != nil, (subscriber?.unreadBytes ?? 0) <= threshold || outcome != nil else { return nil }
            defer { producerWaiter = nil }
            return producerWaiter
        }
    }

    private struct Subscriber {
        let generation: Int
        var continuation: CheckedContinuation<Void, Never>?
        let sink: (any StreamEventSink)?
        /// The last seq this subscriber has had, pushed to its sink or returned by `next`.
        var delivered = 0
        /// The subscriber's task waits in `next` with everything delivered: `emit` may push.
        var parked = false
        /// The last seq the client is known to have: pushed to its sink, or named by `next`/`poll` as its cursor.
        var acknowledged = 0
        /// Bytes of buffered events after `acknowledged`: what the client still has to read.
        var unreadBytes = 0
    }

    public let streamID: String
    public let maxBufferedBytes: Int
    private let state = LockedValue(State())

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
            let emittedAt = ContinuousClock.now
            state.events.append((seq, bytes, emittedAt))
            state.bufferedBytes += bytes.count
            if let acknowledged = state.subscriber?.acknowledged, seq > acknowledged {
                state.subscriber?.unreadBytes += bytes.count
            }
            // Oldest events go first; the newest is always kept.
            while state.bufferedBytes > maxBufferedBytes, state.events.count - state.head > 1 {
                let evicted = state.events[state.head]
                state.bufferedBytes -= evicted.bytes.count
                if let acknowledged = state.subscriber?.acknowledged, evicted.seq > acknowledged {
                    state.subscriber?.unreadBytes -= evicted.bytes.count
                }
                state.head += 1
            }
            if state.head > 1024, state.head * 2 > state.events.count {
                state.events.removeFirst(state.head)
                state.head = 0
            }
            // Pushed under the lock, so events emitted concurrently (parallel tools) keep seq order.
            if let subscriber = state.subscriber, subscriber.parked, subscriber.delivered == seq - 1,
                let sink = subscriber.sink, sink.offer(bytes, emittedAt: emittedAt)
            {
                state.subscriber?.delivered = seq
                state.subscriber?.acknowledged = seq
                state.subscriber?.unreadBytes -= bytes.count
                return (nil, seq)
            }
            return (Self.takeWaiter(&state), seq)
        }
        waiter?.resume()
        return seq
    }

    /// Ends the stream: OK when `error` is nil.
    public func finish(_ error: RPCError?) {
        let (waiter, producer) = state.withLock { state -> (CheckedContinuation<Void, Never>?, CheckedContinuation<Void, Never>?) in
            guard state.outcome == nil else { return (nil, nil) }
            state.outcome = .some(error)
            return (Self.takeWaiter(&state), state.producerMayGo(threshold: 0))
        }
        waiter?.resume()
        producer?.resume()
    }

    /// The attached client's task waits in `next` with everything delivered (for tests).
    var subscriberIsParked: Bool { state.withLock { $0.subscriber?.parked == true && $0.subscriber?.continuation != nil } }

    /// The job waits in `waitForReader` (for tests).
    var producerIsWaiting: Bool { state.withLock { $0.producerWaiter != nil } }

    /// Suspends the job while an attached client has more than half the replay buffer still to read, so a
    /// producer faster than a live client waits for it instead of evicting what it has not read (the
    /// upstream's own buffer takes up the slack). With no client attached, nothing waits: a stream
    /// abandoned for longer than the buffer lasts loses its oldest events (Resume then reports DATA_LOSS).
    public func waitForReader() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let mustWait = state.withLock { state -> Bool in
                    guard state.outcome == nil, let subscriber = state.subscriber,
                        subscriber.unreadBytes > maxBufferedBytes / 2
                    else { return false }
                    state.producerWaiter = continuation
                    return true
                }
                if !mustWait { continuation.resume() }
            }
        } onCancel: {
            state.withLock { state in
                defer { state.producerWaiter = nil }
                return state.producerWaiter
            }?.resume()
        }
    }


    // MARK: Consumer (the attached client)

    /// Attaches a new client, detaching any previous one (its `next` returns nil).
    /// Returns the subscription generation to pass to `next` and `detach`.
    /// - Parameters:
    ///   - sink: where `emit` may push events directly once the client has caught up.
    ///   - seq: the last event the client already has.
    public func attach(sink: (any StreamEventSink)? = nil, after seq: Int = 0) -> Int {
        let (generation, previous, producer) = state.withLock { state in
            state.generation += 1
            let previous = state.subscriber?.continuation
            let unread = state.events[state.head...].reduce(0) { $0 + ($1.seq > seq ? $1.bytes.count : 0) }
            state.subscriber = Subscriber(
                generation: state.generation, sink: sink, delivered: seq, acknowledged: seq, unreadBytes: unread
            )
            state.detachedSince = nil
            return (state.generation, previous, state.producerMayGo(threshold: maxBufferedBytes / 4))
        }
        previous?.resume()
        producer?.resume()
        return generation
    }

    public func detach(_ generation: Int) {
        let (waiter, producer) = state.withLock { state -> (CheckedContinuation<Void, Never>?, CheckedContinuation<Void, Never>?) in
            guard state.subscriber?.generation == generation else { return (nil, nil) }
            let waiter = state.subscriber?.continuation
            state.subscriber = nil
            state.detachedSince = .now
            return (waiter, state.producerMayGo(threshold: 0))
        }
        waiter?.resume()
        producer?.resume()
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

    /// The next item after `seq` (or after the last event already delivered, if later) if there is
    /// one already, without taking it: `next` after the same `seq` returns the same item. Throws
    /// DATA_LOSS when events after `seq` were already evicted from the replay buffer.
    public func poll(after seq: Int, generation: Int) throws(RPCError) -> Poll {
        let (result, producer) = state.withLock { state in
            let result = item(&state, after: seq, generation: generation, taking: false)
            return (result, state.producerMayGo(threshold: maxBufferedBytes / 4))
        }
        producer?.resume()
        return try result.get()
    }

    /// The next item after `seq` (or after the last event already delivered, if later), waiting
    /// for it if needed. Returns nil when this subscription was replaced or detached, or the task
    /// was cancelled. Throws DATA_LOSS when events after `seq` were already evicted from the
    /// replay buffer.
    public func next(after seq: Int, generation: Int) async throws(RPCError) -> Item? {
        while true {
            let (result, producer) = state.withLock { state in
                let result = item(&state, after: seq, generation: generation, taking: true)
                return (result, state.producerMayGo(threshold: maxBufferedBytes / 4))
            }
            producer?.resume()
            switch try result.get() {
            case .ready(let item): return item
            case .detached: return nil
            case .pending: break
            }
            if Task.isCancelled { return nil }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let resumeNow = state.withLock { state -> Bool in
                        guard let subscriber = state.subscriber, subscriber.generation == generation else { return true }
                        // Something may have arrived (and not been pushed) since the check above, or the task
                        // was cancelled before this continuation existed for the cancellation handler to resume.
                        if max(seq, subscriber.delivered) + 1 < state.nextSeq || state.outcome != nil || Task.isCancelled {
                            return true
                        }
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

    /// The item after `seq` for subscription `generation`. `taking` marks it delivered, or when there is
    /// none marks the subscriber parked: its task is about to wait, so `emit` may push to its sink.
    private func item(_ state: inout State, after seq: Int, generation: Int, taking: Bool) -> Result<Poll, RPCError> {
        guard let subscriber = state.subscriber, subscriber.generation == generation else { return .success(.detached) }
        Self.acknowledge(&state, upTo: seq)
        let seq = max(seq, subscriber.delivered)
        if taking { state.subscriber?.parked = false }
        if let first = state.events[safe: state.head], first.seq > seq + 1 {
            return .failure(
                RPCError(.dataLoss, "events \(seq + 1)–\(first.seq - 1) of stream \(streamID) are no longer buffered (the replay buffer keeps \(maxBufferedBytes) bytes per stream); resume sooner")
            )
        }
        if seq + 1 < state.nextSeq, let first = state.events[safe: state.head] {
            let index = state.head + (seq + 1 - first.seq)
            if taking { state.subscriber?.delivered = state.events[index].seq }
            let event = state.events[index]
            return .success(.ready(.event(seq: event.seq, bytes: event.bytes, emittedAt: event.emittedAt)))
        }
        if let outcome = state.outcome { return .success(.ready(.end(outcome))) }
        if taking { state.subscriber?.parked = true }
        return .success(.pending)
    }

    /// The client has every event up to `seq` (it asks for what follows): they no longer count as unread.
    private static func acknowledge(_ state: inout State, upTo seq: Int) {
        guard let acknowledged = state.subscriber?.acknowledged, seq > acknowledged else { return }
        if let first = state.events[safe: state.head]?.seq {
            let (lower, upper) = (max(acknowledged + 1, first), min(seq, state.nextSeq - 1))
            if lower <= upper {
                for acknowledgedSeq in lower...upper {
                    state.subscriber?.unreadBytes -= state.events[state.head + acknowledgedSeq - first].bytes.count
                }
            }
        }
        state.subscriber?.acknowledged = seq
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
