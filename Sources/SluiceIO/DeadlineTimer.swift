import Dispatch
import Synchronization

/// Runs an action once after a delay unless cancelled first: on the calling thread's event loop when there
/// is one, else on a dispatch timer source.
///
/// For timeouts that usually don't fire (stream deadlines, queue and tool timeouts). A cancelled
/// `Task.sleep` resumes its task at once, but on Linux the runtime's `dispatch_after` keeps the timer
/// and the sleeping task's memory until the original deadline: with a 10-minute `--max-stream-duration`
/// that is about 450 bytes per stream served in the last 10 minutes (the soak benchmark measured the
/// growth). Cancelling either kind of timer frees it at once. A job runs on an event loop, whose timer costs
/// no other thread; a dispatch source wakes dispatch's manager thread when created and when cancelled (a
/// quarter of the server's CPU at 300 short streams a second).
package final class DeadlineTimer: @unchecked Sendable {  // DispatchSourceTimer is thread-safe but not annotated
    private final class Flag: Sendable {
        let value = Atomic<Bool>(false)
    }

    private enum Backend {
        case loop(EventLoop, TimerID)
        case dispatch(any DispatchSourceTimer)
    }

    private let backend: Backend
    private let flag = Flag()

    package init(after delay: Duration, _ action: @escaping @Sendable () -> Void) {
        let flag = flag
        if let loop = EventLoop.current {
            let id = loop.scheduleTimer(after: delay) {
                flag.value.store(true, ordering: .releasing)
                action()
            }
            backend = .loop(loop, id)
            return
        }
        let source = DispatchSource.makeTimerSource(queue: .global())
        source.schedule(deadline: .now() + Self.interval(delay))
        source.setEventHandler {
            flag.value.store(true, ordering: .releasing)
            action()
        }
        source.resume()
        backend = .dispatch(source)
    }

    /// Whether the action ran (or is running).
    package var fired: Bool { flag.value.load(ordering: .acquiring) }

    /// Safe from any thread, and more than once.
    package func cancel() {
        switch backend {
        case .loop(let loop, let id):
            loop.cancelTimer(id)
        case .dispatch(let source):
            source.cancel()
        }
    }

    deinit {
        cancel()
    }

    /// `delay` in nanoseconds, negative ones as 0 and anything beyond a century as a century.
    private static func interval(_ delay: Duration) -> DispatchTimeInterval {
        let (seconds, attoseconds) = delay.components
        guard seconds >= 0 else { return .nanoseconds(0) }
        let century: Int64 = 100 * 365 * 86_400
        return .nanoseconds(Int(min(seconds, century) * 1_000_000_000 + attoseconds / 1_000_000_000))
    }
}
