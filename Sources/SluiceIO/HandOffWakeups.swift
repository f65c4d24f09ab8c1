/// What a `HandOffStateMachine` event asks for once the lock is released: resume the consumer task,
/// notify a callback consumer, resume the producer task. At most one of each.
public struct HandOffWakeups<ProducerFailure: Error>: Sendable {
    private var consumer: CheckedContinuation<Void, Never>?
    /// A callback consumer (an event loop) must be told to look again.
    public private(set) var notifiesConsumer = false
    private var producer: CheckedContinuation<Void, ProducerFailure>?
    private var producerResult: Result<Void, ProducerFailure> = .success(())

    public init() {}

    init(consumer: CheckedContinuation<Void, Never>) {
        self.consumer = consumer
    }

    init(notifiesConsumer: Bool) {
        self.notifiesConsumer = notifiesConsumer
    }

    init(producer: CheckedContinuation<Void, ProducerFailure>, result: Result<Void, ProducerFailure>) {
        self.producer = producer
        producerResult = result
    }

    /// Nothing to do (for tests, like the two below).
    var isEmpty: Bool { consumer == nil && !notifiesConsumer && producer == nil }

    /// Resumes a consumer task (`unparkConsumer`, `parkConsumer`).
    var resumesConsumer: Bool { consumer != nil }

    /// Resumes a producer task; nil if none, else whether with success.
    var resumesProducer: Result<Void, ProducerFailure>? { producer.map { _ in producerResult } }

    /// Adds `other`'s wakeups: two events under one lock may each wake a different side.
    public mutating func merge(_ other: Self) {
        if let continuation = other.consumer {
            precondition(consumer == nil, "one consumer task was resumed twice")
            consumer = continuation
        }
        notifiesConsumer = notifiesConsumer || other.notifiesConsumer
        if let continuation = other.producer {
            precondition(producer == nil, "one producer task was resumed twice")
            producer = continuation
            producerResult = other.producerResult
        }
    }

    /// Resumes the tasks and, for a callback consumer, calls `notifyConsumer`. Call with no lock held.
    public func perform(notifyConsumer: () -> Void = {}) {
        consumer?.resume()
        if notifiesConsumer { notifyConsumer() }
        producer?.resume(with: producerResult)
    }
}
