import SluiceIO

/// One follower's wait for a stream's notifications on its loop's `RedisSubscriber`. A notification that arrives
/// while the follower is busy (reading the log) is kept, so the next `next` returns at once: none is lost between a
/// read and the wait after it.
final class RedisStreamLogWatch: StreamLogWatch, @unchecked Sendable {
    let channel: String
    // `subscriber` is loop-confined: reached through `onLoop`.
    private let subscriber: RedisSubscriber
    private let state = LockedValue(State())

    private struct State {
        /// A notification arrived while nobody waited.
        var pending = false
        var ended = false
        var waiter: CheckedContinuation<Void, Never>?
        /// Numbers the waits, so that a timer of an earlier wait cannot end a later one.
        var wait: UInt64 = 0
        var timer: TimerID?
        var closed = false
    }

    init(subscriber: RedisSubscriber, channel: String) {
        self.subscriber = subscriber
        self.channel = channel
    }

    func next(within timeout: Duration) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let wait: UInt64? = state.withLock { state in
                    guard !state.pending, !state.closed else {
                        state.pending = false
                        return nil
                    }
                    state.wait += 1
                    state.waiter = continuation
                    return state.wait
                }
                guard let wait else { return continuation.resume() }
                onLoop { [self] in
                    let timer = subscriber.loop.scheduleTimer(after: timeout) { [self] in wake(ifWaiting: wait) }
                    let stale = state.withLock { state in
                        guard state.wait == wait, state.waiter != nil else { return true }
                        state.timer = timer
                        return false
                    }
                    if stale { subscriber.loop.cancelTimer(timer) }
                }
            }
        } onCancel: {
            wake(ifWaiting: nil)
        }
    }

    func close() {
        state.withLock { $0.closed = true }
        wake(ifWaiting: nil)
        onLoop { [self] in subscriber.remove(self) }
    }

    var endAnnounced: Bool { state.withLock { $0.ended } }

    /// The stream's log may have grown, or the stream `ended` (on the subscriber's loop).
    func notify(ended: Bool) {
        let (waiter, timer) = state.withLock { state -> (CheckedContinuation<Void, Never>?, TimerID?) in
            if ended { state.ended = true }
            guard let waiter = state.waiter else {
                state.pending = true
                return (nil, nil)
            }
            state.waiter = nil
            defer { state.timer = nil }
            return (waiter, state.timer)
        }
        if let timer { subscriber.loop.cancelTimer(timer) }
        waiter?.resume()
    }

    /// Ends wait number `wait` (any wait when nil: a cancellation or `close`) with no notification.
    private func wake(ifWaiting wait: UInt64?) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard wait == nil || state.wait == wait else { return nil }
            // The timer has fired or will find no waiter: it needs no cancelling.
            state.timer = nil
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    private func onLoop(_ body: @escaping @Sendable () -> Void) {
        if subscriber.loop.inEventLoop {
            body()
        } else {
            subscriber.loop.execute(body)
        }
    }
}
