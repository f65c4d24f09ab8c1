import SluiceIO
import SluiceStore
import SluiceWire
import Synchronization

/// Takes an attached client's events without waiting: the fast path from the job to the client.
public protocol StreamEventSink: Sendable {
    /// Queues `bytes` for the client if that is possible at once; false when the client is not keeping up
    /// (or is gone), and the subscriber's task then delivers the event itself, waiting as needed.
    /// `seq` and `type`: the event's (an SSE reader writes them around the frame); `emittedAt`: when the job emitted
    /// the event (what delivery latency is measured from).
    func offer(_ bytes: [UInt8], seq: Int, type: String, emittedAt: ContinuousClock.Instant) -> Bool
}

/// The events of one stream: numbered, kept in a bounded replay buffer, and handed to the one
/// client attached at a time. The job keeps recording while no client is attached (a dropped
/// connection), so a `Resume` within the grace period continues with no gap.
///
/// A subscriber with a sink gets each new event pushed into it by `emit` while its task is parked
/// in `next` with nothing left to deliver, so the common case costs no task switch per event.
///
/// A `HandOff` whose load is what the attached client has still to read, whose producer is the job
/// (`waitForReader`) and whose consumer is the subscriber's task (`next`). The push runs outside the
/// lock (the sink takes the client's outbound lock, which wakes its loop): one push is in flight at a
/// time, claimed under the lock and counted as accepted; `pushState` says when it is over. Whoever finds
/// it still in flight (a concurrent emit, `finish`, a waking subscriber) leaves the rest to the pusher,
/// which comes back under the lock, so events still reach the client in seq order, each once.
public final class StreamChannel: Sendable {
    public enum Item: Sendable, Equatable {
        /// `type`: the event's type (its frame's `type`); `emittedAt`: when the job emitted it.
        case event(seq: Int, type: String, bytes: [UInt8], emittedAt: ContinuousClock.Instant)
        /// The stream is over; nothing follows.
        case end(RPCError?)
    }

    private struct Replay: Sendable {
        var events: [(seq: Int, type: String, bytes: [UInt8], emittedAt: ContinuousClock.Instant)] = []
        var head = 0
        var bufferedBytes = 0
        var nextSeq = 1
        var outcome: RPCError??
        var subscriber: Subscriber?
        var generation = 0
        var detachedSince: ContinuousClock.Instant? = .now
        /// The push claimed by an emitter and not yet known to be over (see `pushState`).
        var push: Push?
        /// With a shared log, what it has acknowledged: the client gets nothing the log does not hold yet.
        var delivery: LogDelivery

        /// The events before this seq may reach the client now.
        var deliverableEnd: Int { delivery.deliverableEnd(nextSeq: nextSeq) }

        /// The stream has ended and the client may see it: no event is held back for the log.
        var endIsDeliverable: Bool { outcome != nil && delivery.endIsDeliverable(nextSeq: nextSeq) }

        /// The buffered event `seq`, if it is still buffered.
        func event(_ seq: Int) -> (seq: Int, type: String, bytes: [UInt8], emittedAt: ContinuousClock.Instant)? {
            guard let first = events[safe: head]?.seq, seq >= first, seq < nextSeq else { return nil }
            return events[head + seq - first]
        }
    }

    private struct Subscriber: Sendable {
        let generation: Int
        let sink: (any StreamEventSink)?
        /// The last seq this subscriber has had, pushed to its sink or returned by `next`.
        var delivered = 0
        /// The subscriber's task waits in `next` with everything delivered: `emit` may push.
        var parked = false
        /// The last seq the client is known to have: pushed to its sink, or named by `next`/`poll` as its cursor.
        /// Bytes of buffered events after it are the hand-off's load.
        var acknowledged = 0
    }

    /// An event being offered to a sink outside the lock, counted as delivered until refused.
    private struct Push: Sendable {
        let generation: Int
        let seq: Int
        let acknowledgedBefore: Int
    }

    /// What to offer to a sink once the lock is released.
    private struct PushAction: Sendable {
        let sink: any StreamEventSink
        let bytes: [UInt8]
        let seq: Int
        let type: String
        let emittedAt: ContinuousClock.Instant
    }

    /// `Replay.push`'s progress, for the pusher to report without the lock: idle, in flight, or in flight
    /// with someone waiting for it to come back under the lock.
    private enum PushState {
        static let idle = 0
        static let inFlight = 1
        static let awaited = 2
    }

    public let streamID: String
    public let maxBufferedBytes: Int
    /// The store's log of this stream (nil with `--store memory`): each event is appended after the lock is released,
    /// and reaches the attached client once the log has acknowledged it (`LogDelivery`).
    private let log: (any StreamLogWriter)?
    /// The producer waits while its attached client has more than half the buffer to read, until a quarter.
    private let handOff: HandOff<Replay>
    private let pushState = Atomic<Int>(PushState.idle)

    public init(streamID: String, maxBufferedBytes: Int, log: (any StreamLogWriter)? = nil) {
        self.streamID = streamID
        self.maxBufferedBytes = maxBufferedBytes
        self.log = log
        handOff = HandOff(
            Replay(delivery: log.map { LogDelivery.held(after: $0.firstSeq - 1) } ?? .unheld),
            machine: HandOffStateMachine(capacity: maxBufferedBytes / 2, producerResumesAt: maxBufferedBytes / 4)
        )
        log?.onProgress { [weak self] progress in self?.logProgressed(progress) }
    }

    /// The log acknowledged events, or will not get the rest (see `StreamLogProgress`): what it released goes to the
    /// client, in order, and then the end if the stream is over.
    func logProgressed(_ progress: StreamLogProgress) {
        let push = handOff.withLock { state, wakeups -> PushAction? in
            guard state.buffer.delivery.apply(progress), !pushInFlight(&state.buffer) else { return nil }
            let push = dispatch(&state, &wakeups)
            if push == nil, state.buffer.endIsDeliverable, let finished = state.machine.finish() { wakeups.merge(finished) }
            return push
        }
        if let push { offer(push) }
    }

    // MARK: Producer (the job)

    /// A channel mirroring a stream another replica runs, from the store: its events arrive already encoded
    /// (`record`), from `seq + 1` on.
    public convenience init(mirroring streamID: String, after seq: Int, maxBufferedBytes: Int) {
        self.init(streamID: streamID, maxBufferedBytes: maxBufferedBytes)
        handOff.withLock { state, _ in state.buffer.nextSeq = seq + 1 }
    }

    /// Records an event; returns its seq.
    @discardableResult
    public func emit(_ event: StreamEvent) -> Int {
        append(type: event.type) { seq in event.encoded(streamID: streamID, seq: seq) }
    }

    /// Records an event another replica encoded as `seq` (a mirror's events, in order).
    public func record(seq: Int, type: String, frame: [UInt8]) {
        append(type: type) { next in
            precondition(next == seq, "a mirrored stream's events must be recorded in order: got \(seq), expected \(next)")
            return frame
        }
    }

    /// False while this replica may have lost the stream to another (see `StreamLogWriter.mayEmit`).
    public var mayEmit: Bool { log?.mayEmit ?? true }

    /// Numbers, buffers and delivers an event whose frame `encode` makes for its seq (under the lock: cheap work).
    /// Nothing is recorded while another replica may own the stream.
    @discardableResult
    private func append(type: String, _ encode: (Int) -> [UInt8]) -> Int {
        let owned = mayEmit
        let (seq, push, recorded) = handOff.withLock { state, wakeups -> (Int, PushAction?, (type: String, bytes: [UInt8])?) in
            guard state.buffer.outcome == nil, owned else { return (state.buffer.nextSeq - 1, nil, nil) }
            let seq = state.buffer.nextSeq
            state.buffer.nextSeq += 1
            let bytes = encode(seq)
            state.buffer.events.append((seq, type, bytes, ContinuousClock.now))
            state.buffer.bufferedBytes += bytes.count
            if let acknowledged = state.buffer.subscriber?.acknowledged, seq > acknowledged {
                _ = state.machine.add(bytes.count)
            }
            // Oldest events go first; the newest is always kept.
            while state.buffer.bufferedBytes > maxBufferedBytes, state.buffer.events.count - state.buffer.head > 1 {
                let evicted = state.buffer.events[state.buffer.head]
                state.buffer.bufferedBytes -= evicted.bytes.count
                if let acknowledged = state.buffer.subscriber?.acknowledged, evicted.seq > acknowledged {
                    wakeups.merge(state.machine.remove(evicted.bytes.count))
                }
                state.buffer.head += 1
            }
            if state.buffer.head > 1024, state.buffer.head * 2 > state.buffer.events.count {
                state.buffer.events.removeFirst(state.buffer.head)
                state.buffer.head = 0
            }
            let recorded = log == nil ? nil : (type, bytes)
            if pushInFlight(&state.buffer) { return (seq, nil, recorded) }
            return (seq, dispatch(&state, &wakeups), recorded)
        }
        if let push { offer(push) }
        if let recorded { log?.append(seq: seq, type: recorded.type, frame: recorded.bytes) }
        return seq
    }

    /// Ends the stream: OK when `error` is nil.
    public func finish(_ error: RPCError?) {
        if let lastSeq = end(error) { log?.finish(lastSeq: lastSeq, status: (error?.code ?? .ok).name, message: error?.message) }
    }

    /// Ends the stream for this replica's readers with `error`, but not in the store: this replica handed it off, and
    /// another continues it from the log. Nothing is recorded after the last event; returns once the store has that
    /// event and has released the stream (true), or could not (false; see `StreamLogWriter.handOff`).
    public func endForHandOff(_ error: RPCError) async -> Bool {
        guard let lastSeq = end(error), let log else { return false }
        return await log.handOff(lastSeq: lastSeq)
    }

    /// Another replica could continue the stream from the store's log now (false with `--store memory`).
    public func canHandOff() async -> Bool {
        await log?.canHandOff() ?? false
    }

    /// Sets the outcome, once; returns the last seq, or nil when the stream had ended already.
    private func end(_ error: RPCError?) -> Int? {
        handOff.withLock { state, wakeups -> Int? in
            guard state.buffer.outcome == nil else { return nil }
            state.buffer.outcome = .some(error)
            defer {
                // A push in flight must land before the subscriber can see the end: its pusher ends the stream. Events
                // held for the log come first too: its acknowledgement ends the stream (`logProgressed`).
                if !pushInFlight(&state.buffer), state.buffer.endIsDeliverable, let finished = state.machine.finish() {
                    wakeups.merge(finished)
                }
            }
            return state.buffer.nextSeq - 1
        }
    }

    /// The events still in the replay buffer, oldest first: every event while the first is seq 1.
    public var bufferedFrames: [(seq: Int, frame: [UInt8])] {
        handOff.withLock { state, _ in state.buffer.events[state.buffer.head...].map { ($0.seq, $0.bytes) } }
    }

    /// The attached client's task waits in `next` with everything delivered (for tests).
    var subscriberIsParked: Bool {
        handOff.withLock { state, _ in state.buffer.subscriber?.parked == true && state.machine.hasParkedConsumer }
    }

    /// The job waits in `waitForReader` (for tests).
    var producerIsWaiting: Bool { handOff.withLock { state, _ in state.machine.hasParkedProducer } }

    /// Suspends the job while an attached client has more than half the replay buffer still to read, so a
    /// producer faster than a live client waits for it instead of evicting what it has not read (the
    /// upstream's own buffer takes up the slack). With no client attached, nothing waits: a stream
    /// abandoned for longer than the buffer lasts loses its oldest events (Resume then reports DATA_LOSS).
    public func waitForReader() async {
        await handOff.waitForRoom(unlessLoadAtMost: maxBufferedBytes / 2)
    }

    // MARK: Pushing to a sink

    /// Offers `push` to its sink with no lock held, then, unless it was accepted with nobody waiting for it,
    /// settles it under the lock, which may hand over the next event to push.
    private func offer(_ push: PushAction) {
        var next: PushAction? = push
        while let push = next {
            let accepted = push.sink.offer(push.bytes, seq: push.seq, type: push.type, emittedAt: push.emittedAt)
            if accepted,
                pushState.compareExchange(
                    expected: PushState.inFlight, desired: PushState.idle, ordering: .acquiringAndReleasing
                ).exchanged
            {
                return
            }
            next = handOff.withLock { state, wakeups in settlePush(accepted: accepted, &state, &wakeups) }
        }
    }

    /// Under the lock: true while a push is in flight, in which case its pusher is asked to come back under
    /// the lock when it is over. Forgets a push that is over (accepted: nothing to undo).
    private func pushInFlight(_ replay: inout Replay) -> Bool {
        guard replay.push != nil else { return false }
        let (exchanged, original) = pushState.compareExchange(
            expected: PushState.inFlight, desired: PushState.awaited, ordering: .acquiringAndReleasing
        )
        if exchanged || original == PushState.awaited { return true }
        replay.push = nil
        return false
    }

    /// Under the lock, by the pusher: the push is over. A refused event is the subscriber's task's to
    /// deliver; then whatever was left waiting for the push is done.
    private func settlePush(
        accepted: Bool, _ state: inout HandOff<Replay>.State, _ wakeups: inout HandOffWakeups
    ) -> PushAction? {
        pushState.store(PushState.idle, ordering: .releasing)
        guard let push = state.buffer.push else { return nil }
        state.buffer.push = nil
        if !accepted, state.buffer.subscriber?.generation == push.generation {
            state.buffer.subscriber?.delivered = push.seq - 1
            state.buffer.subscriber?.acknowledged = push.acknowledgedBefore
            state.buffer.subscriber?.parked = false
            // What the claim acknowledged is unread again, as far as it is still buffered.
            var unread = 0
            for seq in (push.acknowledgedBefore + 1)...push.seq { unread += state.buffer.event(seq)?.bytes.count ?? 0 }
            _ = state.machine.add(unread)
        }
        let next = dispatch(&state, &wakeups)
        // The end `finish` left to this pusher, once nothing more is to be pushed.
        if next == nil, state.buffer.endIsDeliverable, let finished = state.machine.finish() { wakeups.merge(finished) }
        return next
    }

    /// Under the lock, with no push in flight: hands the subscriber what waits for it. A parked subscriber
    /// with a sink gets its next event pushed (claimed here, offered by the caller after unlocking);
    /// otherwise its task is woken if there is anything for it.
    private func dispatch(_ state: inout HandOff<Replay>.State, _ wakeups: inout HandOffWakeups) -> PushAction? {
        guard let subscriber = state.buffer.subscriber, subscriber.delivered + 1 < state.buffer.deliverableEnd else { return nil }
        let seq = subscriber.delivered + 1
        guard subscriber.parked, let sink = subscriber.sink, let event = state.buffer.event(seq) else {
            wakeups.merge(state.machine.wakeConsumer())
            return nil
        }
        state.buffer.push = Push(generation: subscriber.generation, seq: seq, acknowledgedBefore: subscriber.acknowledged)
        // Once the stream has ended, the pusher must come back to end it for the subscriber; and to push the next event
        // if one is ready already (events the log acknowledged together).
        let pusherReturns = state.buffer.outcome != nil || seq + 1 < state.buffer.deliverableEnd
        pushState.store(pusherReturns ? PushState.awaited : PushState.inFlight, ordering: .relaxed)
        state.buffer.subscriber?.delivered = seq
        Self.acknowledge(&state, upTo: seq, &wakeups)
        return PushAction(sink: sink, bytes: event.bytes, seq: event.seq, type: event.type, emittedAt: event.emittedAt)
    }

    // MARK: Consumer (the attached client)

    /// Attaches a new client, detaching any previous one (its `next` returns nil).
    /// Returns the subscription generation to pass to `next` and `detach`.
    /// - Parameters:
    ///   - sink: where `emit` may push events directly once the client has caught up.
    ///   - seq: the last event the client already has.
    public func attach(sink: (any StreamEventSink)? = nil, after seq: Int = 0) -> Int {
        handOff.withLock { state, wakeups in
            state.buffer.generation += 1
            wakeups.merge(state.machine.unparkConsumer())
            let unread = state.buffer.events[state.buffer.head...].reduce(0) { $0 + ($1.seq > seq ? $1.bytes.count : 0) }
            state.buffer.subscriber = Subscriber(generation: state.buffer.generation, sink: sink, delivered: seq, acknowledged: seq)
            state.buffer.detachedSince = nil
            wakeups.merge(state.machine.setLoad(unread))
            return state.buffer.generation
        }
    }

    public func detach(_ generation: Int) {
        handOff.withLock { state, wakeups in
            guard state.buffer.subscriber?.generation == generation else { return }
            wakeups.merge(state.machine.unparkConsumer())
            state.buffer.subscriber = nil
            state.buffer.detachedSince = .now
            wakeups.merge(state.machine.setLoad(0))
        }
    }

    /// Since when no client has been attached, or nil while one is.
    public var detachedSince: ContinuousClock.Instant? { handOff.withLock { state, _ in state.buffer.detachedSince } }

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
        try handOff.withLock { state, wakeups in
            item(&state, &wakeups, after: seq, generation: generation, taking: false)
        }.get()
    }

    /// The next item after `seq` (or after the last event already delivered, if later), waiting
    /// for it if needed. Returns nil when this subscription was replaced or detached, or the task
    /// was cancelled. Throws DATA_LOSS when events after `seq` were already evicted from the
    /// replay buffer.
    public func next(after seq: Int, generation: Int) async throws(RPCError) -> Item? {
        switch try await next(after: seq, generation: generation, until: nil) {
        case .item(let item): item
        case .detached, .timedOut: nil
        }
    }

    /// What `next(after:generation:until:)` ends with.
    public enum Wait: Sendable, Equatable {
        case item(Item)
        /// This subscription was replaced or detached, or the task was cancelled.
        case detached
        /// Nothing came before the deadline.
        case timedOut
    }

    /// `next`, giving up at `deadline`: a reader that writes something of its own while the stream is quiet
    /// (the SSE heartbeat) waits here, on one timer of its loop, instead of racing a sleep against `next` (a
    /// task group whose losing child could have taken an event).
    public func next(after seq: Int, generation: Int, until deadline: ContinuousClock.Instant?) async throws(RPCError) -> Wait {
        var timer: DeadlineTimer?
        defer { timer?.cancel() }
        while true {
            let result = handOff.withLock { state, wakeups in
                item(&state, &wakeups, after: seq, generation: generation, taking: true)
            }
            switch try result.get() {
            case .ready(let item): return .item(item)
            case .detached: return .detached
            case .pending: break
            }
            if Task.isCancelled { return .detached }
            if let deadline {
                if ContinuousClock.now >= deadline { return .timedOut }
                // Armed once, on the first wait: a burst of ready events needs no timer.
                if timer == nil {
                    timer = DeadlineTimer(after: deadline - .now) { [handOff] in
                        handOff.withLock { state, wakeups in
                            guard state.buffer.subscriber?.generation == generation else { return }
                            wakeups.merge(state.machine.unparkConsumer())
                        }
                    }
                }
            }
            await handOff.waitAsConsumer { state in
                guard let subscriber = state.buffer.subscriber, subscriber.generation == generation else { return true }
                // Read under the lock the timer takes: a timer that fired before this check is seen here.
                if let deadline, ContinuousClock.now >= deadline { return true }
                // A push in flight wakes this task when it is over, if there is then anything for it.
                if pushInFlight(&state.buffer) { return false }
                // Something may have arrived (and not been pushed) since the check above.
                return max(seq, subscriber.delivered) + 1 < state.buffer.deliverableEnd || state.buffer.endIsDeliverable
            }
        }
    }

    /// The item after `seq` for subscription `generation`. `taking` marks it delivered, or when there is
    /// none marks the subscriber parked: its task is about to wait, so `emit` may push to its sink.
    private func item(
        _ state: inout HandOff<Replay>.State, _ wakeups: inout HandOffWakeups, after seq: Int, generation: Int,
        taking: Bool
    ) -> Result<Poll, RPCError> {
        guard let subscriber = state.buffer.subscriber, subscriber.generation == generation else { return .success(.detached) }
        // Nothing can follow an event still being pushed until its push is over.
        if pushInFlight(&state.buffer) { return .success(.pending) }
        Self.acknowledge(&state, upTo: seq, &wakeups)
        let seq = max(seq, subscriber.delivered)
        if taking { state.buffer.subscriber?.parked = false }
        if let first = state.buffer.events[safe: state.buffer.head], first.seq > seq + 1 {
            return .failure(
                RPCError(
                    .dataLoss,
                    "events \(seq + 1)–\(first.seq - 1) of stream \(streamID) are no longer buffered (the replay buffer keeps \(maxBufferedBytes) bytes per stream); resume sooner"
                )
            )
        }
        if seq + 1 < state.buffer.deliverableEnd, let event = state.buffer.event(seq + 1) {
            if taking { state.buffer.subscriber?.delivered = event.seq }
            return .success(.ready(.event(seq: event.seq, type: event.type, bytes: event.bytes, emittedAt: event.emittedAt)))
        }
        if state.buffer.endIsDeliverable, let outcome = state.buffer.outcome { return .success(.ready(.end(outcome))) }
        if taking { state.buffer.subscriber?.parked = true }
        return .success(.pending)
    }

    /// The client has every event up to `seq` (it asks for what follows, or it was pushed): they no longer
    /// count as unread.
    private static func acknowledge(
        _ state: inout HandOff<Replay>.State, upTo seq: Int, _ wakeups: inout HandOffWakeups
    ) {
        guard let acknowledged = state.buffer.subscriber?.acknowledged, seq > acknowledged else { return }
        if let first = state.buffer.events[safe: state.buffer.head]?.seq {
            let (lower, upper) = (max(acknowledged + 1, first), min(seq, state.buffer.nextSeq - 1))
            if lower <= upper {
                var read = 0
                for acknowledgedSeq in lower...upper {
                    read += state.buffer.events[state.buffer.head + acknowledgedSeq - first].bytes.count
                }
                wakeups.merge(state.machine.remove(read))
            }
        }
        state.buffer.subscriber?.acknowledged = seq
    }
}

extension Array {
    fileprivate subscript(safe index: Int) -> Element? {
        indices.contains(index) ? self[index] : nil
    }
}
