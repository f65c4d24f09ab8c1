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
public struct HandOffStateMachine<ProducerFailure: Error>: Sendable {
    private enum Consumer: Sendable {
        /// Will look at the hand-off again by itself.
        case running
        /// A task waiting for activity.
        case parked(CheckedContinuation<Void, Never>)
        /// Woken only by a notification (`HandOffWakeups.notifiesConsumer`).
        case idle
    }

    /// The load above which a producer should wait (`add` reports crossing it).
    public let capacity: Int
    /// A waiting producer is resumed once the load falls to this.
    public let producerResumesAt: Int
    /// Units queued and not yet consumed, as the owner counts them.
    public private(set) var load = 0
    /// The producer is done: nothing more will be added; the consumer drains what is queued.
    public private(set) var isFinished = false
    /// The consumer is gone: a waiting or later producer fails with `closedResult`.
    public private(set) var isClosed = false
    private var closedResult: Result<Void, ProducerFailure> = .success(())
    private var consumer: Consumer
    private var producer: CheckedContinuation<Void, ProducerFailure>?

    /// - Parameter consumerStartsIdle: a callback consumer that must be notified of the first activity.
    public init(capacity: Int, producerResumesAt: Int, consumerStartsIdle: Bool = false) {
        precondition(producerResumesAt <= capacity, "a producer would be resumed above the load it waits at")
        self.capacity = capacity
        self.producerResumesAt = producerResumesAt
        consumer = consumerStartsIdle ? .idle : .running
    }

    /// Neither finished nor closed.
    public var isOpen: Bool { !isFinished && !isClosed }

    public var hasParkedConsumer: Bool {
        if case .parked = consumer { return true }
        return false
    }

    public var hasParkedProducer: Bool { producer != nil }

    // MARK: Load

    /// `cost` more units were queued. Returns true when the load is now above `capacity`.
    public mutating func add(_ cost: Int) -> Bool {
        load += cost
        return load > capacity
    }

    /// `cost` units were consumed (or dropped): resumes the producer if the load fell to `producerResumesAt`.
    public mutating func remove(_ cost: Int) -> HandOffWakeups<ProducerFailure> {
        load -= cost
        precondition(load >= 0, "more was removed from a hand-off than was added")
        return resumeProducerIfRoom()
    }

    /// The owner counted its load again (a new reader, a dropped buffer).
    public mutating func setLoad(_ newLoad: Int) -> HandOffWakeups<ProducerFailure> {
        precondition(newLoad >= 0, "a hand-off's load cannot be negative")
        load = newLoad
        return resumeProducerIfRoom()
    }

    private mutating func resumeProducerIfRoom() -> HandOffWakeups<ProducerFailure> {
        guard load <= producerResumesAt, let producer else { return HandOffWakeups() }
        self.producer = nil
        return HandOffWakeups(producer: producer, result: .success(()))
    }

    // MARK: Consumer

    /// There is something new for the consumer: resumes it if parked, notifies it if idle.
    public mutating func wakeConsumer() -> HandOffWakeups<ProducerFailure> {
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
    public mutating func consumerIdle() {
        consumer = .idle
    }

    /// Parks the consumer task's `continuation` unless it must go on at once: `isReady` (the owner has
    /// something for it), the hand-off has ended, or `isCancelled` (checked by the caller under the same lock,
    /// so a cancellation that ran before the park is not missed).
    public mutating func parkConsumer(
        _ continuation: CheckedContinuation<Void, Never>, isReady: Bool, isCancelled: Bool
    ) -> HandOffWakeups<ProducerFailure> {
        if isReady || isFinished || isClosed || isCancelled { return HandOffWakeups(consumer: continuation) }
        if case .parked = consumer { preconditionFailure("a hand-off has one consumer task at a time") }
        consumer = .parked(continuation)
        return HandOffWakeups()
    }

    /// Resumes the parked consumer task, if any, whatever the state (its task was cancelled, or replaced).
    public mutating func unparkConsumer() -> HandOffWakeups<ProducerFailure> {
        guard case .parked(let continuation) = consumer else { return HandOffWakeups() }
        consumer = .running
        return HandOffWakeups(consumer: continuation)
    }

    // MARK: Producer

    /// Parks the producer task's `continuation` while the load is above `limit`. Resumes it at once with
    /// `closedResult` if closed, else with `cancelledResult` if `isCancelled` (checked by the caller under the
    /// same lock), else with success if finished or within the limit.
    public mutating func parkProducer(
        _ continuation: CheckedContinuation<Void, ProducerFailure>, unlessLoadAtMost limit: Int,
        isCancelled: Bool, cancelledResult: Result<Void, ProducerFailure>
    ) -> HandOffWakeups<ProducerFailure> {
        if isClosed { return HandOffWakeups(producer: continuation, result: closedResult) }
        if isCancelled { return HandOffWakeups(producer: continuation, result: cancelledResult) }
        if isFinished || load <= limit { return HandOffWakeups(producer: continuation, result: .success(())) }
        precondition(producer == nil, "a hand-off has one waiting producer at a time")
        producer = continuation
        return HandOffWakeups()
    }

    /// Resumes the waiting producer, if any, with `result` (its task was cancelled).
    public mutating func unparkProducer(with result: Result<Void, ProducerFailure>) -> HandOffWakeups<ProducerFailure> {
        guard let producer else { return HandOffWakeups() }
        self.producer = nil
        return HandOffWakeups(producer: producer, result: result)
    }

    // MARK: End

    /// The producer is done. Wakes the consumer to drain and end, and releases a waiting producer.
    /// Returns nil (no change) if already finished or closed.
    public mutating func finish() -> HandOffWakeups<ProducerFailure>? {
        guard isOpen else { return nil }
        isFinished = true
        var wakeups = wakeConsumer()
        wakeups.merge(unparkProducer(with: .success(())))
        return wakeups
    }

    /// The consumer is gone (or the hand-off was torn down): the waiting producer, and every later
    /// `parkProducer`, get `result`; a parked consumer task is resumed. Returns nil if already closed.
    public mutating func close(failingProducerWith result: Result<Void, ProducerFailure>) -> HandOffWakeups<ProducerFailure>? {
        guard !isClosed else { return nil }
        isClosed = true
        closedResult = result
        var wakeups = unparkConsumer()
        wakeups.merge(unparkProducer(with: result))
        return wakeups
    }
}
