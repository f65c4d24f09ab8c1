import SluiceIO
import SluiceWire

/// A call's response stream and how it ended: `finish` ends the stream (throwing unless the status is OK) and
/// resumes every task waiting in `status()`, with no lock held.
final class CallOutcome<Element: Sendable>: Sendable {
    let continuation: AsyncThrowingStream<Element, any Error>.Continuation
    private let state = LockedValue<(status: RPCClientStatus?, waiters: [CheckedContinuation<RPCClientStatus, Never>])>((nil, []))

    init(continuation: AsyncThrowingStream<Element, any Error>.Continuation) {
        self.continuation = continuation
    }

    func finish(_ status: RPCClientStatus) {
        let waiters = state.withLock { state in
            state.status = status
            defer { state.waiters = [] }
            return state.waiters
        }
        if status.isOK {
            continuation.finish()
        } else {
            continuation.finish(throwing: RPCError(status.code, status.message))
        }
        for waiter in waiters { waiter.resume(returning: status) }
    }

    /// The final status, once `finish` has run.
    func status() async -> RPCClientStatus {
        await withCheckedContinuation { waiter in
            let known = state.withLock { state -> RPCClientStatus? in
                if let status = state.status { return status }
                state.waiters.append(waiter)
                return nil
            }
            if let known { waiter.resume(returning: known) }
        }
    }
}
