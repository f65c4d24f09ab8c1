import Dispatch
import Glibc
import SluiceIO
import SluiceWire
import Synchronization
import Testing

@testable import SluiceEngine

/// A sink that takes events while `accepting` is true and records them.
final class RecordingSink: StreamEventSink {
    let accepting = LockedValue(true)
    let taken = LockedValue<[Int]>([])
    let emittedAt = LockedValue<[ContinuousClock.Instant]>([])

    func offer(_ bytes: [UInt8], seq: Int, type: String, emittedAt: ContinuousClock.Instant) -> Bool {
        guard accepting.withLock({ $0 }) else { return false }
        let seq = (try? JSONValue(parsing: bytes))?["seq"]?.intValue ?? -1
        taken.withLock { $0.append(seq) }
        self.emittedAt.withLock { $0.append(emittedAt) }
        return true
    }
}

@Suite struct StreamChannelTests {
    /// Runs `next` until the subscriber's task would wait: what it delivered, and the end if reached.
    func drain(_ channel: StreamChannel, generation: Int, after: Int) async throws -> (seqs: [Int], cursor: Int, ended: Bool) {
        var seqs: [Int] = []
        var cursor = after
        while true {
            let item = try await channel.next(after: cursor, generation: generation)
            switch item {
            case .event(let seq, _, _, _)?:
                seqs.append(seq)
                cursor = seq
            case .end?: return (seqs, cursor, true)
            case nil: return (seqs, cursor, false)
            }
        }
    }

    @Test func aCaughtUpSubscriberGetsEventsPushedInOrderAndEachOnce() async throws {
        let channel = StreamChannel(streamID: "s", maxBufferedBytes: 1 << 20)
        for index in 1...3 { channel.emit(.messageDelta(id: "m", delta: "\(index)")) }
        let sink = RecordingSink()
        let generation = channel.attach(sink: sink, after: 1)
        // Replay: events 2 and 3 come through `next`, not the sink.
        var delivered: [Int] = []
        for _ in 0..<2 {
            guard case .event(let seq, _, _, _)? = try await channel.next(after: delivered.last ?? 1, generation: generation) else {
                Issue.record("expected a replayed event")
                return
            }
            delivered.append(seq)
        }
        #expect(delivered == [2, 3])

        // Parked with nothing left: later events go to the sink; `next` wakes only for the end.
        let waiter = Task { try await drain(channel, generation: generation, after: 3) }
        // Emitting while the task still runs would keep it busy forever: wait until it has parked.
        while !channel.subscriberIsParked { await Task.yield() }
        channel.emit(.messageDelta(id: "m", delta: "probe"))
        #expect(!sink.taken.withLock({ $0 }).isEmpty, "a parked subscriber's event was not pushed")
        let firstPushed = sink.taken.withLock { $0[0] }
        for index in 0..<50 { channel.emit(.messageDelta(id: "m", delta: "\(index)")) }
        channel.finish(nil)
        let result = try await waiter.value
        #expect(result.ended)
        let pushed = sink.taken.withLock { $0 }
        #expect(pushed == Array(firstPushed...(firstPushed + 50)))
        let emitted = sink.emittedAt.withLock { $0 }
        #expect(emitted == emitted.sorted(), "each pushed event carries its own emission instant")
        // Every seq after 3 reached the client exactly once, through one path or the other.
        #expect((result.seqs + pushed).sorted() == Array(4...(firstPushed + 50)))
    }

    @Test func aRefusingSinkFallsBackToTheTaskWithoutReordering() async throws {
        let channel = StreamChannel(streamID: "s", maxBufferedBytes: 1 << 20)
        let sink = RecordingSink()
        let generation = channel.attach(sink: sink)
        let waiter = Task { try await drain(channel, generation: generation, after: 0) }
        while !channel.subscriberIsParked { await Task.yield() }
        channel.emit(.messageDelta(id: "m", delta: "probe"))
        #expect(!sink.taken.withLock({ $0 }).isEmpty, "a parked subscriber's event was not pushed")
        sink.accepting.withLock { $0 = false }
        let refusedFrom = channel.emit(.messageDelta(id: "m", delta: "refused"))
        // Accepting again: the task is behind, so nothing may be pushed past it until it catches up.
        sink.accepting.withLock { $0 = true }
        for _ in 0..<20 { channel.emit(.messageDelta(id: "m", delta: "more")) }
        channel.finish(nil)
        let result = try await waiter.value
        let pushed = sink.taken.withLock { $0 }
        #expect(result.ended)
        let all = pushed + result.seqs
        #expect(all.sorted() == Array(1...(refusedFrom + 20)), "every event delivered exactly once")
        // From the refusal on, the task delivers a contiguous run, and pushing resumes only after it.
        let lateByTask = result.seqs.filter { $0 >= refusedFrom }
        let lateByPush = pushed.filter { $0 >= refusedFrom }
        #expect(lateByTask.first == refusedFrom)
        #expect(lateByTask == Array(refusedFrom..<(refusedFrom + lateByTask.count)))
        #expect(lateByPush == Array((refusedFrom + lateByTask.count)..<(refusedFrom + 21)))
    }

    @Test(.timeLimit(.minutes(1))) func pollSaysWhatNextWouldReturnWithoutWaiting() async throws {
        let channel = StreamChannel(streamID: "st_test", maxBufferedBytes: 1 << 20)
        let generation = channel.attach()
        #expect(try channel.poll(after: 0, generation: generation) == .pending)

        let beforeEmit = ContinuousClock.now
        let seq = channel.emit(.messageDelta(id: "msg_1", delta: "hi"))
        let afterEmit = ContinuousClock.now
        guard
            case .ready(.event(seq: 1, type: "message_delta", let bytes, let emittedAt)) = try channel.poll(
                after: 0, generation: generation)
        else {
            Issue.record("the first event is not ready")
            return
        }
        #expect(seq == 1)
        #expect(emittedAt >= beforeEmit && emittedAt <= afterEmit, "an event carries when it was emitted")
        #expect(try JSONValue(parsing: bytes)["delta"] == "hi")
        // Polling takes nothing: `next` still returns the event.
        #expect(
            try await channel.next(after: 0, generation: generation)
                == .event(seq: 1, type: "message_delta", bytes: bytes, emittedAt: emittedAt))
        #expect(try channel.poll(after: 1, generation: generation) == .pending)

        channel.finish(nil)
        #expect(try channel.poll(after: 1, generation: generation) == .ready(.end(nil)))

        _ = channel.attach()
        #expect(try channel.poll(after: 1, generation: generation) == .detached)
    }

    @Test func pollReportsEvictedEventsAsDataLoss() throws {
        // Each event is bigger than the buffer, so only the newest is kept.
        let channel = StreamChannel(streamID: "st_test", maxBufferedBytes: 8)
        let generation = channel.attach()
        channel.emit(.messageDelta(id: "msg_1", delta: "one"))
        channel.emit(.messageDelta(id: "msg_1", delta: "two"))

        let error = #expect(throws: RPCError.self) { try channel.poll(after: 0, generation: generation) }
        #expect(error?.code == .dataLoss)
        guard case .ready(.event(seq: 2, _, _, _)) = try channel.poll(after: 1, generation: generation) else {
            Issue.record("the newest event is not kept")
            return
        }
    }

    /// A waiter cancelled at any moment, even between its last check and its suspension, returns nil
    /// instead of waiting for the next event, which here never comes. (Without that, this test hangs
    /// within a few thousand attempts; the time limit turns the hang into a failure.)
    @Test(.timeLimit(.minutes(1))) func cancelledWaitersReturnNil() async throws {
        for attempt in 0..<50_000 {
            let channel = StreamChannel(streamID: "st_test", maxBufferedBytes: 1 << 20)
            let generation = channel.attach()
            let waiter = Task.detached { try await channel.next(after: 0, generation: generation) }
            // Cancel at varying points of the waiter's progress.
            for _ in 0..<(attempt % 3) { await Task.yield() }
            waiter.cancel()
            #expect(try await waiter.value == nil)
        }
    }

    @Test func aProducerWaitsForAnAttachedReaderInsteadOfEvictingWhatItHasNotRead() async throws {
        // About 100-byte events, five buffers' worth: without waiting, the reader would find its next
        // events evicted (DATA_LOSS).
        let channel = StreamChannel(streamID: "s", maxBufferedBytes: 4096)
        let generation = channel.attach()
        let producerDone = LockedValue(false)
        let producer = Task {
            for _ in 0..<200 {
                channel.emit(.messageDelta(id: "m", delta: String(repeating: "x", count: 40)))
                await channel.waitForReader()
            }
            channel.finish(nil)
            producerDone.withLock { $0 = true }
        }
        // Before the client reads anything, the producer must stop (rather than run to the end).
        while !channel.producerIsWaiting && !producerDone.withLock({ $0 }) { await Task.yield() }
        #expect(channel.producerIsWaiting, "the producer ran ahead of a client that read nothing")
        var seqs: [Int] = []
        reading: while let item = try await channel.next(after: seqs.last ?? 0, generation: generation) {
            switch item {
            case .event(let seq, _, _, _): seqs.append(seq)
            case .end(let error):
                #expect(error == nil)
                break reading
            }
        }
        await producer.value
        #expect(seqs == Array(1...200))
    }

    @Test func withNoReaderAttachedTheProducerNeverWaits() async throws {
        let channel = StreamChannel(streamID: "s", maxBufferedBytes: 4096)
        for _ in 0..<200 {
            channel.emit(.messageDelta(id: "m", delta: String(repeating: "x", count: 40)))
            await channel.waitForReader()
        }
        let generation = channel.attach()
        #expect(throws: RPCError.self) { try channel.poll(after: 0, generation: generation) }
    }
}

/// What one client received, in order, by either path: pushed by the job or delivered by its task.
final class ClientLog: Sendable {
    let seqs = LockedValue<[Int]>([])

    func append(_ seq: Int) { seqs.withLock { $0.append(seq) } }
    var value: [Int] { seqs.withLock { $0 } }

    static func seq(of bytes: [UInt8]) -> Int { (try? JSONValue(parsing: bytes))?["seq"]?.intValue ?? -1 }
}

/// Accepts events into a `ClientLog`, refusing every `refuseEvery`-th offer (a client that falls behind now and
/// then), and looks at the channel from inside `offer`, which would deadlock if the channel held its lock.
final class LoggingSink: StreamEventSink {
    let log: ClientLog
    let refuseEvery: Int
    let offers = LockedValue(0)
    let channel = LockedValue<StreamChannel?>(nil)

    init(log: ClientLog, refuseEvery: Int) {
        self.log = log
        self.refuseEvery = refuseEvery
    }

    func offer(_ bytes: [UInt8], seq: Int, type: String, emittedAt: ContinuousClock.Instant) -> Bool {
        _ = channel.withLock({ $0 })?.detachedSince
        let offer = offers.withLock { offers in
            offers += 1
            return offers
        }
        if refuseEvery > 0, offer % refuseEvery == 0 { return false }
        log.append(ClientLog.seq(of: bytes))
        return true
    }
}

/// Blocks inside `offer` until opened: a push held in flight.
final class GatedSink: StreamEventSink {
    let log: ClientLog
    let entered = Atomic<Bool>(false)
    let gate = DispatchSemaphore(value: 0)

    init(log: ClientLog) { self.log = log }

    func offer(_ bytes: [UInt8], seq: Int, type: String, emittedAt: ContinuousClock.Instant) -> Bool {
        entered.store(true, ordering: .releasing)
        gate.wait()
        log.append(ClientLog.seq(of: bytes))
        return true
    }
}

@Suite(.timeLimit(.minutes(2))) struct StreamChannelConcurrencyTests {
    /// The subscriber's task: appends what `next` returns to the client's log until the end, logged as 0.
    func deliver(_ channel: StreamChannel, generation: Int, to log: ClientLog) async throws -> Bool {
        var cursor = 0
        while let item = try await channel.next(after: cursor, generation: generation) {
            switch item {
            case .event(let seq, _, _, _):
                log.append(seq)
                cursor = seq
            case .end:
                log.append(0)
                return true
            }
        }
        return false
    }

    @Test func theSinkIsOfferedEventsWithNoLockHeld() async throws {
        let channel = StreamChannel(streamID: "s", maxBufferedBytes: 1 << 20)
        let log = ClientLog()
        let sink = LoggingSink(log: log, refuseEvery: 0)
        sink.channel.withLock { $0 = channel }
        let generation = channel.attach(sink: sink)
        let task = Task { try await deliver(channel, generation: generation, to: log) }
        while !channel.subscriberIsParked { await Task.yield() }
        channel.emit(.messageDelta(id: "m", delta: "pushed"))
        #expect(log.value == [1], "the event was pushed (and the sink could look at the channel)")
        channel.finish(nil)
        #expect(try await task.value)
        #expect(log.value == [1, 0])
    }

    /// Parallel tool calls emit concurrently; pushes run outside the lock and some are refused: the client
    /// still gets every event once, in seq order.
    @Test(arguments: [0, 7]) func concurrentEmittersReachTheClientInOrder(refuseEvery: Int) async throws {
        for _ in 0..<20 {
            let channel = StreamChannel(streamID: "s", maxBufferedBytes: 1 << 22)
            let log = ClientLog()
            let generation = channel.attach(sink: LoggingSink(log: log, refuseEvery: refuseEvery))
            let subscriber = Task.detached { try await deliver(channel, generation: generation, to: log) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for emitter in 0..<4 {
                    group.addTask {
                        for index in 0..<250 {
                            channel.emit(.messageDelta(id: "m", delta: "\(emitter).\(index)"))
                            if index % 50 == 0 { await Task.yield() }
                        }
                    }
                }
                try await group.waitForAll()
            }
            channel.finish(nil)
            #expect(try await subscriber.value)
            let received = log.value
            #expect(received.count == 1001, "every event once, then the end")
            #expect(received.last == 0)
            #expect(received.indices.dropLast().first { received[$0] != $0 + 1 } == nil, "the first position out of seq order")
        }
    }

    @Test func theEndWaitsForAPushStillInFlight() async throws {
        let channel = StreamChannel(streamID: "s", maxBufferedBytes: 1 << 20)
        let log = ClientLog()
        let sink = GatedSink(log: log)
        let generation = channel.attach(sink: sink)
        let subscriber = Task.detached { try await deliver(channel, generation: generation, to: log) }
        while !channel.subscriberIsParked { await Task.yield() }
        let emitted = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            channel.emit(.messageDelta(id: "m", delta: "held"))
            emitted.signal()
        }
        while !sink.entered.load(ordering: .acquiring) { await Task.yield() }
        // The push is in flight: the job ends the stream and may emit no more, without waiting for it.
        channel.finish(nil)
        #expect(channel.emit(.messageDelta(id: "m", delta: "too late")) == 1)
        #expect(try channel.poll(after: 0, generation: generation) == .pending, "the end may not overtake the push")
        sink.gate.signal()
        #expect(try await subscriber.value)
        #expect(log.value == [1, 0], "the pushed event, then the end")
        emitted.wait()
    }

    @Test func aProducerWaitingForTheReaderIsReleasedByItsDetach() async throws {
        let channel = StreamChannel(streamID: "s", maxBufferedBytes: 1024)
        let generation = channel.attach()
        let producer = Task.detached {
            for _ in 0..<100 {
                channel.emit(.messageDelta(id: "m", delta: String(repeating: "x", count: 40)))
                await channel.waitForReader()
            }
        }
        while !channel.producerIsWaiting { await Task.yield() }
        channel.detach(generation)
        await producer.value
        #expect(!channel.producerIsWaiting)
    }

    // MARK: Waiting with a deadline (the SSE heartbeat)

    @Test func aQuietStreamTimesOutAndAReadyEventNeedsNoWait() async throws {
        let channel = StreamChannel(streamID: "s", maxBufferedBytes: 1 << 20)
        let generation = channel.attach(after: 0)
        #expect(try await channel.next(after: 0, generation: generation, until: .now + .milliseconds(20)) == .timedOut)
        channel.emit(.messageDelta(id: "m", delta: "a"))
        // A deadline already passed still returns an event that is ready.
        guard case .item(.event(seq: 1, _, _, _)) = try await channel.next(after: 0, generation: generation, until: .now - .seconds(1))
        else {
            Issue.record("the ready event was not returned")
            return
        }
        channel.finish(nil)
        #expect(try await channel.next(after: 1, generation: generation, until: .now + .seconds(60)) == .item(.end(nil)))
    }

    @Test func anEventEmittedWhileWaitingEndsTheWaitBeforeTheDeadline() async throws {
        let channel = StreamChannel(streamID: "s", maxBufferedBytes: 1 << 20)
        let generation = channel.attach(after: 0)
        let waiter = Task { try await channel.next(after: 0, generation: generation, until: .now + .seconds(600)) }
        while !channel.subscriberIsParked { await Task.yield() }
        channel.emit(.messageDelta(id: "m", delta: "a"))
        guard case .item(.event(seq: 1, _, _, _)) = try await waiter.value else {
            Issue.record("the wait did not end with the event")
            return
        }
    }

    /// Deadlines that expire as events arrive: every event is returned once, in order, whichever comes first.
    @Test func eventsArrivingAsDeadlinesExpireAreEachReturnedOnce() async throws {
        let channel = StreamChannel(streamID: "s", maxBufferedBytes: 1 << 24)
        let generation = channel.attach(after: 0)
        let count = 2000
        // Off the cooperative pool, so the reader's deadlines expire while it emits.
        DispatchQueue.global().async {
            for index in 1...count {
                channel.emit(.messageDelta(id: "m", delta: "\(index)"))
                if index % 7 == 0 { usleep(50) }
            }
            channel.finish(nil)
        }
        var seqs: [Int] = []
        var timeouts = 0
        reading: while true {
            switch try await channel.next(after: seqs.last ?? 0, generation: generation, until: .now + .microseconds(30)) {
            case .item(.event(let seq, _, _, _)): seqs.append(seq)
            case .item(.end): break reading
            case .timedOut: timeouts += 1
            case .detached:
                Issue.record("detached")
                break reading
            }
        }
        #expect(seqs == Array(1...count))
        #expect(timeouts > 0, "no wait timed out: the race was not exercised")
    }
}
