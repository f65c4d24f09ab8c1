import Dispatch
import Synchronization
import Testing

@testable import SluiceIO

/// A bounded FIFO of numbers built on `HandOff` the way Sluice's queues are (load = items queued; the producer
/// waits above `capacity` until half of it is left): the subject of the concurrency tests below, which also
/// run under ThreadSanitizer (`make test-tsan`).
final class NumberQueue: Sendable {
    struct Closed: Error {}

    let capacity: Int
    let handOff: HandOff<[Int]>
    /// The largest load a send left behind.
    let highWater = Atomic<Int>(0)

    init(capacity: Int) {
        self.capacity = capacity
        handOff = HandOff([], machine: HandOffStateMachine(capacity: capacity, producerResumesAt: capacity / 2))
    }

    func send(_ number: Int) async throws {
        let mustWait = try handOff.withLock { state, wakeups throws(Closed) -> Bool in
            guard state.machine.isOpen else { throw Closed() }
            state.buffer.append(number)
            let over = state.machine.add(1)
            highWater.max(state.machine.load, ordering: .relaxed)
            wakeups.merge(state.machine.wakeConsumer())
            return over
        }
        if mustWait { try await handOff.waitAsProducer(unlessLoadAtMost: capacity / 2) }
    }

    func finish() {
        handOff.withLock { state, wakeups in
            if let finished = state.machine.finish() { wakeups.merge(finished) }
        }
    }

    func close() {
        handOff.withLock { state, wakeups in
            if let closed = state.machine.close(failingProducerWith: .failure(Closed())) { wakeups.merge(closed) }
            state.buffer = []
            wakeups.merge(state.machine.setLoad(0))
        }
    }

    /// The next number; nil at the end, or when the task is cancelled.
    func receive() async -> Int? {
        while true {
            let next = handOff.withLock { state, wakeups -> Int?? in
                guard !state.buffer.isEmpty else { return state.machine.isOpen ? .some(nil) : .none }
                wakeups.merge(state.machine.remove(1))
                return state.buffer.removeFirst()
            }
            switch next {
            case .some(.some(let number)): return number
            case .none: return nil
            case .some(.none): break
            }
            if Task.isCancelled { return nil }
            await handOff.waitAsConsumer { !$0.buffer.isEmpty }
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct HandOffTests {
    @Test func everyNumberArrivesOnceInOrderAndTheQueueStaysBounded() async throws {
        let queue = NumberQueue(capacity: 8)
        let count = 20_000
        let producer = Task.detached {
            for number in 0..<count { try await queue.send(number) }
            queue.finish()
        }
        let consumer = Task.detached {
            var received: [Int] = []
            while let number = await queue.receive() { received.append(number) }
            return received
        }
        try await producer.value
        #expect(await consumer.value == Array(0..<count))
        #expect(queue.highWater.load(ordering: .relaxed) <= 9, "the producer waits once over capacity")
    }

    @Test func closingFailsTheProducerAndEndsTheConsumer() async throws {
        for _ in 0..<500 {
            let queue = NumberQueue(capacity: 2)
            let producer = Task.detached {
                var number = 0
                while true {
                    try await queue.send(number)
                    number += 1
                }
            }
            let consumer = Task.detached {
                while await queue.receive() != nil {}
            }
            queue.close()
            await #expect(throws: NumberQueue.Closed.self) { try await producer.value }
            await consumer.value
        }
    }

    /// A waiter cancelled at any moment, even between its check and its park, is resumed (else the test
    /// hangs until its time limit).
    @Test func cancelledWaitersAreResumed() async throws {
        for attempt in 0..<5_000 {
            let queue = NumberQueue(capacity: 2)
            let consumer = Task.detached { await queue.receive() }
            for _ in 0..<(attempt % 3) { await Task.yield() }
            consumer.cancel()
            #expect(await consumer.value == nil)

            for number in 0..<3 {
                queue.handOff.withLock { state, _ in
                    state.buffer.append(number)
                    _ = state.machine.add(1)
                }
            }
            let producer = Task.detached { try await queue.send(3) }
            for _ in 0..<(attempt % 3) { await Task.yield() }
            producer.cancel()
            await #expect(throws: CancellationError.self) { try await producer.value }
        }
    }

    @Test func anIdleCallbackConsumerDrainsEverythingWhenNotified() async throws {
        let drained = LockedValue<[Int]>([])
        let ended = LockedValue(false)
        let notifications = Atomic<Int>(0)
        let loop = DispatchQueue(label: "hand-off consumer")
        // The box lets the notification reach the hand-off it belongs to.
        final class Box: Sendable {
            let handOff = LockedValue<HandOff<[Int]>?>(nil)
        }
        let box = Box()
        let drain: @Sendable () -> Void = {
            guard let handOff = box.handOff.withLock({ $0 }) else { return }
            let (numbers, end) = handOff.withLock { state, wakeups -> ([Int], Bool) in
                let numbers = state.buffer
                state.buffer = []
                wakeups.merge(state.machine.remove(numbers.count))
                let end = state.machine.isFinished
                if !end { state.machine.consumerIdle() }
                return (numbers, end)
            }
            drained.withLock { $0 += numbers }
            if end { ended.withLock { $0 = true } }
        }
        let handOff = HandOff<[Int]>(
            [], machine: HandOffStateMachine(capacity: 1 << 20, producerResumesAt: 1 << 19, consumerStartsIdle: true),
            notifyConsumer: {
                notifications.add(1, ordering: .relaxed)
                loop.async(execute: drain)
            }
        )
        box.handOff.withLock { $0 = handOff }
        let count = 10_000
        for number in 0..<count {
            handOff.withLock { state, wakeups in
                state.buffer.append(number)
                _ = state.machine.add(1)
                wakeups.merge(state.machine.wakeConsumer())
            }
        }
        handOff.withLock { state, wakeups in
            if let finished = state.machine.finish() { wakeups.merge(finished) }
        }
        while !ended.withLock({ $0 }) { await Task.yield() }
        #expect(drained.withLock { $0 } == Array(0..<count))
        #expect(notifications.load(ordering: .relaxed) <= count, "a busy consumer is not notified again")
    }

    /// The wakeups run after the lock is released: a consumer notified may look at the hand-off at once
    /// (under the lock, this would deadlock).
    @Test func wakeupsRunWithTheLockReleased() {
        final class Box: Sendable {
            let handOff = LockedValue<HandOff<[Int]>?>(nil)
            let seen = LockedValue<[Int]?>(nil)
        }
        let box = Box()
        let handOff = HandOff<[Int]>(
            [], machine: HandOffStateMachine(capacity: 8, producerResumesAt: 4, consumerStartsIdle: true),
            notifyConsumer: {
                let handOff = box.handOff.withLock { $0 }
                box.seen.withLock { $0 = handOff?.withLock { state, _ in state.buffer } }
            }
        )
        box.handOff.withLock { $0 = handOff }
        handOff.withLock { state, wakeups in
            state.buffer.append(7)
            _ = state.machine.add(1)
            wakeups.merge(state.machine.wakeConsumer())
        }
        #expect(box.seen.withLock { $0 } == [7])
    }

    @Test func wakeupsRecordedBeforeAThrowAreStillPerformed() async {
        struct Refusal: Error {}
        let queue = NumberQueue(capacity: 8)
        let consumer = Task.detached { await queue.receive() }
        while !queue.handOff.withLock({ state, _ in state.machine.hasParkedConsumer }) { await Task.yield() }
        #expect(throws: Refusal.self) {
            try queue.handOff.withLock { state, wakeups throws(Refusal) in
                state.buffer.append(1)
                _ = state.machine.add(1)
                wakeups.merge(state.machine.wakeConsumer())
                throw Refusal()
            }
        }
        #expect(await consumer.value == 1)
    }
}
