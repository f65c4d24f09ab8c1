import SluiceIO
import Testing

@testable import SluiceIO

@Suite struct TimerHeapTests {
    @Test func firesInDeadlineOrderAndSkipsCancelled() {
        var heap = TimerHeap()
        let start = ContinuousClock.now
        var fired: [Int] = []
        for (label, offset) in [(3, 30), (1, 10), (4, 40), (2, 20)] {
            let id = heap.schedule(at: start + .milliseconds(offset)) { fired.append(label) }
            if label == 4 { heap.cancel(id) }
        }
        #expect(heap.millisecondsUntilNext(now: start) == 10)
        while let action = heap.popDue(now: start + .milliseconds(25)) { action() }
        #expect(fired == [1, 2])
        while let action = heap.popDue(now: start + .seconds(1)) { action() }
        #expect(fired == [1, 2, 3])
        #expect(heap.millisecondsUntilNext(now: start) == -1)
    }

    @Test func notDueYetStaysAndReportsItsDelay() {
        var heap = TimerHeap()
        let start = ContinuousClock.now
        heap.schedule(at: start + .microseconds(2500)) {}
        #expect(heap.popDue(now: start) == nil)
        // Rounded up: the loop must not wake before the deadline.
        #expect(heap.millisecondsUntilNext(now: start) == 3)
    }

    /// libcurl moves its timer on almost every call: cancelled entries must not pile up.
    @Test func manyRescheduledTimersKeepTheHeapSmall() {
        var heap = TimerHeap()
        let start = ContinuousClock.now
        var current = heap.schedule(at: start + .seconds(1)) {}
        for step in 1...10_000 {
            heap.cancel(current)
            current = heap.schedule(at: start + .seconds(1) + .milliseconds(step)) {}
        }
        #expect(heap.count == 1)
        #expect(heap.storedEntries <= 130)
        var fired = 0
        heap.cancel(current)
        heap.schedule(at: start) { fired += 1 }
        while let action = heap.popDue(now: start + .seconds(100)) { action() }
        #expect(fired == 1)
    }
}

@Suite struct EventLoopSleepTests {
    private func withLoop(_ body: (EventLoop) async throws -> Void) async throws {
        let loop = try EventLoop(index: 0)
        let exited = AsyncStream<Void>.makeStream()
        loop.start { exited.continuation.finish() }
        try await body(loop)
        loop.stop()
        for await _ in exited.stream {}
    }

    @Test func sleepsOnTheLoopUntilTheDeadline() async throws {
        try await withLoop { loop in
            let result = await Task(executorPreference: loop) { () -> (Bool, Bool, Duration) in
                let start = ContinuousClock.now
                try? await EventLoop.sleep(for: .milliseconds(20))
                return (EventLoop.current === loop, loop.inEventLoop, ContinuousClock.now - start)
            }.value
            #expect(result.0 && result.1, "resumed on the loop's own thread")
            #expect(result.2 >= .milliseconds(20))
        }
    }

    @Test func cancellationEndsTheSleepAtOnce() async throws {
        try await withLoop { loop in
            let sleeping = Task(executorPreference: loop) { () -> (any Error)? in
                do {
                    try await EventLoop.sleep(for: .seconds(3600))
                    return nil
                } catch {
                    return error
                }
            }
            sleeping.cancel()
            let error = await sleeping.value
            #expect(error is CancellationError)
        }
    }

    @Test func offTheLoopItIsTaskSleep() async throws {
        #expect(EventLoop.current == nil)
        let start = ContinuousClock.now
        try await EventLoop.sleep(for: .milliseconds(5))
        #expect(ContinuousClock.now - start >= .milliseconds(5))
    }
}
