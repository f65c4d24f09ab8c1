/// A `HandOffStateMachine` and the owner's buffer behind one lock: the shell that performs what the
/// machine's events return (resuming tasks, notifying a callback consumer) after releasing the lock,
/// and parks consumer and producer tasks with the cancellation race handled once, here.
///
/// The owner keeps its policy (what is queued, when to refuse, what to drop) in `Buffer` and its own
/// methods; every access goes through `withLock`, whose body must not call into another module or run a
/// caller's closure (`docs/design.md`, "Lock order"): it records `HandOffWakeups` instead, and returns
/// whatever else should happen afterwards.
public final class HandOff<Buffer: Sendable>: Sendable {
    public struct State: Sendable {
        public var buffer: Buffer
        public var machine: HandOffStateMachine
    }

    @usableFromInline let state: LockedValue<State>
    @usableFromInline let notifyConsumer: @Sendable () -> Void

    /// - Parameter notifyConsumer: for a callback consumer (`HandOffStateMachine.consumerIdle`): asks it to
    ///   look again. Called with no lock held.
    public init(
        _ buffer: Buffer, machine: HandOffStateMachine,
        notifyConsumer: @escaping @Sendable () -> Void = {}
    ) {
        state = LockedValue(State(buffer: buffer, machine: machine))
        self.notifyConsumer = notifyConsumer
    }

    /// Runs `body` under the lock, then (also when it throws) performs the wakeups it recorded.
    @inlinable public func withLock<Result: Sendable, E: Error>(
        _ body: (inout State, inout HandOffWakeups) throws(E) -> Result
    ) throws(E) -> Result {
        let (result, wakeups) = state.withLock { state -> (Swift.Result<Result, E>, HandOffWakeups) in
            var wakeups = HandOffWakeups()
            do throws(E) {
                return (.success(try body(&state, &wakeups)), wakeups)
            } catch {
                return (.failure(error), wakeups)
            }
        }
        wakeups.perform(notifyConsumer: notifyConsumer)
        return try result.get()
    }

    /// Suspends the consumer task until `isReady` (evaluated under the lock; it may update the owner's state),
    /// the hand-off ends, or the task is cancelled. May return with nothing new: the caller looks again.
    @inlinable public func waitAsConsumer(isReady: (inout State) -> Bool) async {
        await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                withLock { state, wakeups in
                    let ready = isReady(&state)
                    wakeups.merge(state.machine.parkConsumer(continuation, isReady: ready, isCancelled: Task.isCancelled))
                }
            }
        } onCancel: {
            withLock { state, wakeups in wakeups.merge(state.machine.unparkConsumer()) }
        }
    }
}

extension HandOff {
    /// Suspends the producer task while the load is above `limit`, until it falls to `producerResumesAt`.
    /// Throws the close's error if the consumer is gone, `CancellationError` if the task is cancelled.
    @inlinable public func waitAsProducer(unlessLoadAtMost limit: Int) async throws {
        try await waitAsProducer(unlessLoadAtMost: limit, cancelledResult: .failure(CancellationError()))
    }

    /// Suspends the producer task while the load is above `limit`, until it falls to `producerResumesAt`, the
    /// hand-off ends, or the task is cancelled: for a producer that goes on either way (a closed hand-off's
    /// result is not reported).
    @inlinable public func waitForRoom(unlessLoadAtMost limit: Int) async {
        // Nearly always there is room (a stream's producer calls this after every event): then one look under the
        // lock, without the continuation and cancellation handler of a wait (they cost as much as the event).
        let mayGoOn = state.withLock { state in !state.machine.isOpen || state.machine.load <= limit }
        if mayGoOn { return }
        try? await waitAsProducer(unlessLoadAtMost: limit, cancelledResult: .success(()))
    }

    @inlinable func waitAsProducer(unlessLoadAtMost limit: Int, cancelledResult: Result<Void, any Error>) async throws {
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                withLock { state, wakeups in
                    wakeups.merge(
                        state.machine.parkProducer(
                            continuation, unlessLoadAtMost: limit, isCancelled: Task.isCancelled, cancelledResult: cancelledResult
                        )
                    )
                }
            }
        } onCancel: {
            withLock { state, wakeups in wakeups.merge(state.machine.unparkProducer(with: cancelledResult)) }
        }
    }
}
