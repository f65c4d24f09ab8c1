extension EventLoop {
    /// Suspends the calling task until `deadline`. On a loop thread the wait is a timer of that loop, so a task
    /// that runs on the loop is resumed by it with no thread switch (`Task.sleep` on Linux fires on a dispatch
    /// thread, which then has to wake the loop); elsewhere it is `Task.sleep`. Throws `CancellationError` when
    /// the task is cancelled.
    public static func sleep(until deadline: ContinuousClock.Instant) async throws {
        guard let loop = current else { return try await Task.sleep(until: deadline, clock: .continuous) }
        try await loop.sleep(until: deadline)
    }

    /// `sleep(until:)` for `duration` from now.
    public static func sleep(for duration: Duration) async throws {
        try await sleep(until: .now + duration)
    }

    /// Called on this loop's thread.
    private func sleep(until deadline: ContinuousClock.Instant) async throws {
        let sleeper = LoopSleeper()
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                guard sleeper.install(continuation) else { return continuation.resume(throwing: CancellationError()) }
                let timer = scheduleTimer(after: deadline - .now) { sleeper.resume(with: .success(())) }
                if !sleeper.setTimer(timer) { cancelTimer(timer) }
            }
        } onCancel: {
            // Any thread: resume at once and free the timer.
            if let timer = sleeper.resume(with: .failure(CancellationError())) { cancelTimer(timer) }
        }
    }
}

/// One `sleep`'s hand-off between the loop's timer and a cancellation from any thread: whichever comes first
/// resumes the task, exactly once.
private final class LoopSleeper: Sendable {
    private struct State {
        var continuation: CheckedContinuation<Void, any Error>?
        var timer: TimerID?
        var done = false
    }

    private let state = LockedValue(State())

    /// False if the task was cancelled before it suspended.
    func install(_ continuation: CheckedContinuation<Void, any Error>) -> Bool {
        state.withLock { state in
            guard !state.done else { return false }
            state.continuation = continuation
            return true
        }
    }

    /// False if the task was cancelled meanwhile: the caller cancels `timer` itself.
    func setTimer(_ timer: TimerID) -> Bool {
        state.withLock { state in
            guard !state.done else { return false }
            state.timer = timer
            return true
        }
    }

    /// Resumes the task unless already done; returns the timer still scheduled, if any.
    @discardableResult
    func resume(with result: Result<Void, any Error>) -> TimerID? {
        let (continuation, timer) = state.withLock { state -> (CheckedContinuation<Void, any Error>?, TimerID?) in
            guard !state.done else { return (nil, nil) }
            state.done = true
            defer {
                state.continuation = nil
                state.timer = nil
            }
            return (state.continuation, state.timer)
        }
        continuation?.resume(with: result)
        return timer
    }
}
