import Synchronization
import Testing

@testable import SluiceEngine

@Suite struct DeadlineTimerTests {
    @Test func firesAfterTheDelay() async {
        let (signal, continuation) = AsyncStream<Void>.makeStream()
        let started = ContinuousClock.now
        let timer = DeadlineTimer(after: .milliseconds(50)) { continuation.yield() }
        var iterator = signal.makeAsyncIterator()
        await iterator.next()
        #expect(timer.fired)
        #expect(ContinuousClock.now - started >= .milliseconds(50))
    }

    @Test func cancelledTimerNeverFires() async {
        let ran = Mutex(false)
        let cancelled = DeadlineTimer(after: .milliseconds(20)) { ran.withLock { $0 = true } }
        cancelled.cancel()
        // Once a later timer fired, the cancelled one's deadline has passed too.
        let (signal, continuation) = AsyncStream<Void>.makeStream()
        let later = DeadlineTimer(after: .milliseconds(100)) { continuation.yield() }
        var iterator = signal.makeAsyncIterator()
        await iterator.next()
        #expect(later.fired)
        #expect(!cancelled.fired)
        #expect(!ran.withLock { $0 })
    }
}
