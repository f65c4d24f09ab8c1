import Dispatch
import Synchronization

/// Runs an action once after a delay unless cancelled first, on a dispatch timer source.
///
/// For timeouts that usually don't fire (stream deadlines, queue and tool timeouts). A cancelled
/// `Task.sleep` resumes its task at once, but on Linux the runtime's `dispatch_after` keeps the timer
/// and the sleeping task's memory until the original deadline: with a 10-minute `--max-stream-duration`
/// that is about 450 bytes per stream served in the last 10 minutes (the soak benchmark measured the
/// growth). Cancelling a timer source frees it at once.
final class DeadlineTimer: @unchecked Sendable {  // DispatchSourceTimer is thread-safe but not annotated
    private final class Flag: Sendable {
        let value = Atomic<Bool>(false)
    }

    private let source: any DispatchSourceTimer
    private let flag = Flag()

    init(after delay: Duration, _ action: @escaping @Sendable () -> Void) {
        let source = DispatchSource.makeTimerSource(queue: .global())
        source.schedule(deadline: .now() + Self.interval(delay))
        let flag = flag
        source.setEventHandler {
            flag.value.store(true, ordering: .releasing)
            action()
        }
        source.resume()
        self.source = source
    }

    /// Whether the action ran (or is running).
    var fired: Bool { flag.value.load(ordering: .acquiring) }

    func cancel() {
        source.cancel()
    }

    deinit {
        source.cancel()
    }

    /// `delay` in nanoseconds, negative ones as 0 and anything beyond a century as a century.
    private static func interval(_ delay: Duration) -> DispatchTimeInterval {
        let (seconds, attoseconds) = delay.components
        guard seconds >= 0 else { return .nanoseconds(0) }
        let century: Int64 = 100 * 365 * 86_400
        return .nanoseconds(Int(min(seconds, century) * 1_000_000_000 + attoseconds / 1_000_000_000))
    }
}
