import SluiceIO
import SluiceWire

/// Runs `Admission` for concurrent jobs: `acquire` returns when the job may talk to the upstream,
/// reporting queue positions while it waits.
public final class Scheduler: Sendable {
    private struct Waiter {
        var continuation: CheckedContinuation<Void, any Error>
        var onPosition: @Sendable (Int) -> Void
    }

    private struct State {
        var admission: Admission
        var waiters: [UInt64: Waiter] = [:]
        /// Outcomes decided before the queued task registered its waiter.
        var earlyOutcomes: [UInt64: Result<Void, any Error>] = [:]
        var nextTicket: UInt64 = 0
    }

    private let state: LockedValue<State>
    public let queueTimeout: Duration

    public init(limits: Admission.Limits, queueTimeout: Duration) {
        state = LockedValue(State(admission: Admission(limits: limits)))
        self.queueTimeout = queueTimeout
    }

    public var limits: Admission.Limits { state.withLock { $0.admission.limits } }
    public var active: Int { state.withLock { $0.admission.active } }
    public var queued: Int { state.withLock { $0.admission.queued } }

    /// A running job's permit; release it exactly once.
    public struct Slot: Sendable {
        fileprivate let scheduler: Scheduler
        fileprivate let key: String

        public func release() { scheduler.release(key: key) }
    }

    /// The outcome of admission: running at once, or queued at a position.
    public enum Admitted: Sendable {
        case running(Slot)
        case queued(ticket: UInt64, position: Int)
    }

    /// Admits a job at once or queues it; throws RESOURCE_EXHAUSTED when the queue is full too.
    public func admit(key: String) throws(RPCError) -> Admitted {
        let (ticket, decision) = state.withLock { state in
            state.nextTicket += 1
            let decision = state.admission.admit(ticket: state.nextTicket, key: key)
            return (state.nextTicket, decision)
        }
        switch decision {
        case .run: return .running(Slot(scheduler: self, key: key))
        case .queued(let position): return .queued(ticket: ticket, position: position)
        case .rejected(let reason): throw RPCError(.resourceExhausted, reason)
        }
    }

    /// Admits a job only if it can run at once, else nil (a takeover: a replica at capacity leaves the stream to
    /// another replica rather than queue it).
    public func admitNow(key: String) -> Slot? {
        let admitted = state.withLock { state -> Bool in
            state.nextTicket += 1
            switch state.admission.admit(ticket: state.nextTicket, key: key) {
            case .run: return true
            case .queued:
                _ = state.admission.withdraw(ticket: state.nextTicket)
                return false
            case .rejected: return false
            }
        }
        return admitted ? Slot(scheduler: self, key: key) : nil
    }

    /// Waits until a queued job may run. `onPosition` hears each later position change. Throws
    /// RESOURCE_EXHAUSTED after `queueTimeout`, and CancellationError when the task is cancelled.
    public func waitForSlot(ticket: UInt64, key: String, onPosition: @escaping @Sendable (Int) -> Void) async throws -> Slot {
        let timeout = queueTimeout
        let timer = DeadlineTimer(after: timeout) { [weak self] in
            self?.giveUp(
                ticket,
                RPCError(
                    .resourceExhausted,
                    "the stream waited in the queue for the server's queue timeout of \(DurationParsing.format(timeout)) without getting a slot; retry later"
                )
            )
        }
        defer { timer.cancel() }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let early = state.withLock { state -> Result<Void, any Error>? in
                    if let outcome = state.earlyOutcomes.removeValue(forKey: ticket) { return outcome }
                    state.waiters[ticket] = Waiter(continuation: continuation, onPosition: onPosition)
                    return nil
                }
                // Started, timed out or cancelled between admission and here.
                if let early { continuation.resume(with: early) }
            }
        } onCancel: {
            giveUp(ticket, CancellationError())
        }
        let slot = Slot(scheduler: self, key: key)
        if Task.isCancelled {
            // Started just as the task was cancelled: give the slot straight back.
            slot.release()
            throw CancellationError()
        }
        return slot
    }

    private func giveUp(_ ticket: UInt64, _ error: any Error) {
        let (waiter, moved) = state.withLock { state -> (Waiter?, [(Waiter, Int)]) in
            guard state.admission.withdraw(ticket: ticket) else { return (nil, []) }
            let waiter = state.waiters.removeValue(forKey: ticket)
            if waiter == nil { state.earlyOutcomes[ticket] = .failure(error) }
            return (waiter, Self.positionUpdates(state))
        }
        waiter?.continuation.resume(throwing: error)
        for (other, position) in moved { other.onPosition(position) }
    }

    private func release(key: String) {
        let (started, moved) = state.withLock { state -> ([Waiter], [(Waiter, Int)]) in
            let tickets = state.admission.release(key: key)
            let started = tickets.compactMap { ticket in
                let waiter = state.waiters.removeValue(forKey: ticket)
                if waiter == nil { state.earlyOutcomes[ticket] = .success(()) }
                return waiter
            }
            return (started, tickets.isEmpty ? [] : Self.positionUpdates(state))
        }
        for waiter in started { waiter.continuation.resume() }
        for (other, position) in moved { other.onPosition(position) }
    }

    private static func positionUpdates(_ state: State) -> [(Waiter, Int)] {
        state.admission.positions.compactMap { entry in state.waiters[entry.ticket].map { ($0, entry.position) } }
    }
}
