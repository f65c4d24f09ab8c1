/// The synchronisation core of Sluice's bounded queues (`StreamOutbound`, `UpstreamEventChannel`,
/// `StreamChannel`): how much is queued, the one consumer and the one producer that may be waiting,
/// and whether the hand-off has ended. What is queued, and in which units it is counted (bytes,
/// unread bytes), belongs to the owner, who reports every change here.
///
/// A value type: every event returns the `HandOffWakeups` it causes, which the owner performs after
/// releasing its lock (`HandOff` does so), so no continuation is resumed and no loop is woken under it.
///
/// The consumer is either a task (parked in `parkConsumer`) or something woken by a callback, such
/// as an event loop, which says with `consumerIdle` that it will not look again until notified.
/// The producer is a task that waits for the load to fall (`parkProducer`).
public struct HandOffStateMachine: Sendable {
    @usableFromInline enum Consumer: Sendable {
        /// Will look at the hand-off again by itself.
        case running
        /// A task waiting for activity.
        case parked(UnsafeContinuation<Void, Never>)
        /// Woken only by a notification (`HandOffWakeups.notifiesConsumer`).
        case idle
    }

    /// The load above which a producer should wait (`add` reports crossing it).
    public let capacity: Int
    /// A waiting producer is resumed once the load falls to this.
    public let producerResumesAt: Int
    /// Units queued and not yet consumed, as the owner counts them.
    @inlinable public var load: Int { storedLoad }
    @usableFromInline var storedLoad = 0
    /// The producer is done: nothing more will be added; the consumer drains what is queued.
    @inlinable public var isFinished: Bool { finished }
    @usableFromInline var finished = false
    /// The consumer is gone: a waiting or later producer fails with `closedResult`.
    @inlinable public var isClosed: Bool { closed }
    @usableFromInline var closed = false
    @usableFromInline var closedResult: Result<Void, any Error> = .success(())
    @usableFromInline var consumer: Consumer
    @usableFromInline var producer: UnsafeContinuation<Void, any Error>?

    /// - Parameter consumerStartsIdle: a callback consumer that must be notified of the first activity.
    @inlinable public init(capacity: Int, producerResumesAt: Int, consumerStartsIdle: Bool = false) {
        precondition(producerResumesAt <= capacity, "a producer would be resumed above the load it waits at")
        self.capacity = capacity
        self.producerResumesAt = producerResumesAt
        consumer = consumerStartsIdle ? .idle : .running
    }

    /// Neither finished nor closed.
    @inlinable public var isOpen: Bool { !isFinished && !isClosed }

    @inlinable public var hasParkedConsumer: Bool {
        if case .parked = consumer { return true }
        return false
    }

    @inlinable public var hasParkedProducer: Bool { producer != nil }

    // MARK: Load

    /// `cost` more units were queued. Returns true when the load is now above `capacity`.
    @inlinable public mutating func add(_ cost: Int) -> Bool {
        storedLoad += cost
        return storedLoad > capacity
    }

    /// `cost` units were consumed (or dropped): resumes the producer if the load fell to `producerResumesAt`.
    @inlinable public mutating func remove(_ cost: Int) -> HandOffWakeups {
        storedLoad -= cost
        precondition(load >= 0, "more was removed from a hand-off than was added")
        return resumeProducerIfRoom()
    }

    /// The owner counted its load again (a new reader, a dropped buffer).
    @inlinable public mutating func setLoad(_ newLoad: Int) -> HandOffWakeups {
        precondition(newLoad >= 0, "a hand-off's load cannot be negative")
        storedLoad = newLoad
        return resumeProducerIfRoom()
    }

    @inlinable mutating func resumeProducerIfRoom() -> HandOffWakeups {
        guard load <= producerResumesAt, let producer else { return HandOffWakeups() }
        self.producer = nil
        return HandOffWakeups(producer: producer, result: .success(()))
    }

    // MARK: Consumer

    /// There is something new for the consumer: resumes it if parked, notifies it if idle.
    @inlinable public mutating func wakeConsumer() -> HandOffWakeups {
        switch consumer {
        case .running: return HandOffWakeups()
        case .parked(let continuation):
            consumer = .running
            return HandOffWakeups(consumer: continuation)
        case .idle:
            consumer = .running
            return HandOffWakeups(notifiesConsumer: true)
        }
    }

    /// A callback consumer found nothing to do: the next `wakeConsumer` notifies it.
    @inlinable public mutating func consumerIdle() {
        consumer = .idle
    }

    /// Parks the consumer task's `continuation` unless it must go on at once: `isReady` (the owner has
    /// something for it), the hand-off has ended, or `isCancelled` (checked by the caller under the same lock,
    /// so a cancellation that ran before the park is not missed).
    @inlinable public mutating func parkConsumer(
        _ continuation: UnsafeContinuation<Void, Never>, isReady: Bool, isCancelled: Bool
    ) -> HandOffWakeups {
        if isReady || isFinished || isClosed || isCancelled { return HandOffWakeups(consumer: continuation) }
        if case .parked = consumer { preconditionFailure("a hand-off has one consumer task at a time") }
        consumer = .parked(continuation)
        return HandOffWakeups()
    }

    /// Resumes the parked consumer task, if any, whatever the state (its task was cancelled, or replaced).
    @inlinable public mutating func unparkConsumer() -> HandOffWakeups {
        guard case .parked(let continuation) = consumer else { return HandOffWakeups() }
        consumer = .running
        return HandOffWakeups(consumer: continuation)
    }

    // MARK: Producer

    /// Parks the producer task's `continuation` while the load is above `limit`. Resumes it at once with
    /// `closedResult` if closed, else with `cancelledResult` if `isCancelled` (checked by the caller under the
    /// same lock), else with success if finished or within the limit.
    @inlinable public mutating func parkProducer(
        _ continuation: UnsafeContinuation<Void, any Error>, unlessLoadAtMost limit: Int,
        isCancelled: Bool, cancelledResult: Result<Void, any Error>
    ) -> HandOffWakeups {
        if isClosed { return HandOffWakeups(producer: continuation, result: closedResult) }
        if isCancelled { return HandOffWakeups(producer: continuation, result: cancelledResult) }
        if isFinished || load <= limit { return HandOffWakeups(producer: continuation, result: .success(())) }
        precondition(producer == nil, "a hand-off has one waiting producer at a time")
        producer = continuation
        return HandOffWakeups()
    }

    /// Resumes the waiting producer, if any, with `result` (its task was cancelled).
    @inlinable public mutating func unparkProducer(with result: Result<Void, any Error>) -> HandOffWakeups {
        guard let producer else { return HandOffWakeups() }
        self.producer = nil
        return HandOffWakeups(producer: producer, result: result)
    }

    // MARK: End

    /// The producer is done. Wakes the consumer to drain and end, and releases a waiting producer.
    /// Returns nil (no change) if already finished or closed.
    @inlinable public mutating func finish() -> HandOffWakeups? {
        guard isOpen else { return nil }
        finished = true
        var wakeups = wakeConsumer()
        wakeups.merge(unparkProducer(with: .success(())))
        return wakeups
    }

    /// The consumer is gone (or the hand-off was torn down): the waiting producer, and every later
    /// `parkProducer`, get `result`; a parked consumer task is resumed. Returns nil if already closed.
    @inlinable public mutating func close(failingProducerWith result: Result<Void, any Error>) -> HandOffWakeups? {
        guard !isClosed else { return nil }
        closed = true
        closedResult = result
        var wakeups = unparkConsumer()
        wakeups.merge(unparkProducer(with: result))
        return wakeups
    }
}
