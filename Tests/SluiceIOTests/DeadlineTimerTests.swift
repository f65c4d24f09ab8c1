import Dispatch
import SluiceIO
import Testing

@testable import SluiceIO

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
        let ran = LockedValue(false)
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

@Suite struct DeadlineTimerOnLoopTests {
    private func withLoop(_ body: (EventLoop) async throws -> Void) async throws {
        let loop = try EventLoop(index: 0)
        let (exited, continuation) = AsyncStream<Void>.makeStream()
        loop.start { continuation.finish() }
        try await body(loop)
        loop.stop()
        for await _ in exited {}
    }

    @Test func onALoopItFiresOnThatLoop() async throws {
        try await withLoop { loop in
            let (signal, continuation) = AsyncStream<Bool>.makeStream()
            let timer = await Task(executorPreference: loop) {
                DeadlineTimer(after: .milliseconds(20)) { continuation.yield(loop.inEventLoop) }
            }.value
            var iterator = signal.makeAsyncIterator()
            #expect(await iterator.next() == true, "the action ran on the loop's thread")
            #expect(timer.fired)
        }
    }

    /// The contract: a cancel requested from another thread before the loop looks at the due timer wins, even when
    /// the deadline passes meanwhile. The loop is held in a task while the cancel is requested and the deadline passes.
    @Test func cancelledFromAnotherThreadItNeverFires() async throws {
        try await withLoop { loop in
            let ran = LockedValue(false)
            let loopHeld = DispatchSemaphore(value: 0)
            let release = DispatchSemaphore(value: 0)
            let cancelled = await Task(executorPreference: loop) { () -> DeadlineTimer in
                let timer = DeadlineTimer(after: .milliseconds(20)) { ran.withLock { $0 = true } }
                // Runs in this same turn of the loop, before it looks at its timers.
                loop.execute {
                    loopHeld.signal()
                    release.wait()
                }
                return timer
            }.value
            loopHeld.wait()
            cancelled.cancel()  // off the loop: queued behind the held task
            try await Task.sleep(for: .milliseconds(50))  // the deadline passes while the loop is held
            release.signal()
            let (signal, continuation) = AsyncStream<Void>.makeStream()
            let later = await Task(executorPreference: loop) {
                DeadlineTimer(after: .milliseconds(50)) { continuation.yield() }
            }.value
            var iterator = signal.makeAsyncIterator()
            await iterator.next()
            #expect(later.fired)
            #expect(!cancelled.fired)
            #expect(!ran.withLock { $0 })
        }
    }
}
