/// What a `HandOffStateMachine` event asks for once the lock is released: resume the consumer task,
/// notify a callback consumer, resume the producer task. At most one of each.
///
/// Made, merged and dropped for every message queued, so it holds `UnsafeContinuation`s: plain pointers, where a
/// `CheckedContinuation` costs reference counting and generic value-witness calls each time (a third of the
/// transport's CPU per frame). `merge` and the state machine check that each continuation is resumed once.
public struct HandOffWakeups: Sendable {
    @usableFromInline var consumer: UnsafeContinuation<Void, Never>?
    @usableFromInline var notifies = false
    /// A callback consumer (an event loop) must be told to look again.
    @inlinable public var notifiesConsumer: Bool { notifies }
    @usableFromInline var producer: UnsafeContinuation<Void, any Error>?
    @usableFromInline var producerResult: Result<Void, any Error> = .success(())

    @inlinable public init() {}

    @inlinable init(consumer: UnsafeContinuation<Void, Never>) {
        self.consumer = consumer
    }

    @inlinable init(notifiesConsumer: Bool) {
        notifies = notifiesConsumer
    }

    @inlinable init(producer: UnsafeContinuation<Void, any Error>, result: Result<Void, any Error>) {
        self.producer = producer
        producerResult = result
    }

    /// Nothing to do (for tests, like the two below).
    var isEmpty: Bool { consumer == nil && !notifies && producer == nil }

    /// Resumes a consumer task (`unparkConsumer`, `parkConsumer`).
    var resumesConsumer: Bool { consumer != nil }

    /// Resumes a producer task; nil if none, else whether with success.
    var resumesProducer: Result<Void, any Error>? { producer.map { _ in producerResult } }

    /// Adds `other`'s wakeups: two events under one lock may each wake a different side.
    @inlinable public mutating func merge(_ other: Self) {
        if let continuation = other.consumer {
            precondition(consumer == nil, "one consumer task was resumed twice")
            consumer = continuation
        }
        notifies = notifies || other.notifies
        if let continuation = other.producer {
            precondition(producer == nil, "one producer task was resumed twice")
            producer = continuation
            producerResult = other.producerResult
        }
    }

    /// Resumes the tasks and, for a callback consumer, calls `notifyConsumer`. Call with no lock held.
    @inlinable public func perform(notifyConsumer: () -> Void = {}) {
        consumer?.resume()
        if notifies { notifyConsumer() }
        producer?.resume(with: producerResult)
    }
}
