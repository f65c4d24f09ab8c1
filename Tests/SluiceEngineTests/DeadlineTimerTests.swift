import SluiceTransport
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

    @Test func cancelledFromAnotherThreadItNeverFires() async throws {
        try await withLoop { loop in
            let ran = Mutex(false)
            let cancelled = await Task(executorPreference: loop) {
                DeadlineTimer(after: .milliseconds(20)) { ran.withLock { $0 = true } }
            }.value
            cancelled.cancel()  // off the loop: handed to it
            let (signal, continuation) = AsyncStream<Void>.makeStream()
            let later = await Task(executorPreference: loop) {
                DeadlineTimer(after: .milliseconds(100)) { continuation.yield() }
            }.value
            var iterator = signal.makeAsyncIterator()
            await iterator.next()
            #expect(later.fired)
            #expect(!cancelled.fired)
            #expect(!ran.withLock { $0 })
        }
    }
}
