import SluiceIO
import SluiceStore
import SluiceWire
import Testing

@testable import SluiceEngine

/// A stream's log whose acknowledgements the test sends (`report`): what a shared store would say, when it says it.
final class FakeLogWriter: StreamLogWriter {
    let firstSeq: Int
    let appended = LockedValue<[Int]>([])
    private let handler = LockedValue<(@Sendable (StreamLogProgress) -> Void)?>(nil)

    init(firstSeq: Int = 1) {
        self.firstSeq = firstSeq
    }

    func onProgress(_ handler: @escaping @Sendable (StreamLogProgress) -> Void) { self.handler.withLock { $0 = handler } }

    func append(seq: Int, type: String, frame: [UInt8]) { appended.withLock { $0.append(seq) } }

    func finish(lastSeq: Int, status: String, message: String?) {}

    var mayEmit: Bool { true }

    func canHandOff() async -> Bool { false }

    func handOff(lastSeq: Int) async -> Bool { false }

    func report(_ progress: StreamLogProgress) { handler.withLock { $0 }?(progress) }
}

@Suite struct LogDeliveryTests {
    @Test func withoutALogEveryEventMayGoAtOnce() {
        var delivery = LogDelivery.unheld
        #expect(delivery.deliverableEnd(nextSeq: 5) == 5)
        #expect(delivery.endIsDeliverable(nextSeq: 5))
        let acknowledged = delivery.apply(.logged(through: 3))
        let failed = delivery.apply(.notResumable)
        #expect(!acknowledged && !failed, "nothing was held")
        #expect(delivery == .unheld)
    }

    @Test func aLoggedEventBecomesDeliverableAndAStaleAcknowledgementChangesNothing() {
        var delivery = LogDelivery.held(after: 0)
        #expect(delivery.deliverableEnd(nextSeq: 4) == 1, "events 1–3 wait for the log")
        #expect(!delivery.endIsDeliverable(nextSeq: 4))
        let first = delivery.apply(.logged(through: 2))
        #expect(first && delivery.deliverableEnd(nextSeq: 4) == 3)
        let stale = delivery.apply(.logged(through: 1))
        #expect(!stale && delivery.deliverableEnd(nextSeq: 4) == 3)
        let last = delivery.apply(.logged(through: 3))
        #expect(last && delivery.endIsDeliverable(nextSeq: 4))
    }

    @Test func aStreamTakenOverDeliversWhatItsLogHeldAlready() {
        let delivery = LogDelivery.held(after: 7)
        #expect(delivery.deliverableEnd(nextSeq: 8) == 8)
        #expect(delivery.deliverableEnd(nextSeq: 10) == 8)
    }

    @Test func aStoreFailureReleasesEverythingAndALostStreamOnlyItsEnd() {
        var failed = LogDelivery.held(after: 0)
        let released = failed.apply(.notResumable)
        #expect(released && failed.deliverableEnd(nextSeq: 9) == 9)
        #expect(failed.endIsDeliverable(nextSeq: 9))

        var lost = LogDelivery.held(after: 0)
        _ = lost.apply(.logged(through: 2))
        let ended = lost.apply(.lost)
        #expect(ended)
        #expect(lost.deliverableEnd(nextSeq: 6) == 3, "what the log does not hold is the new owner's to number")
        #expect(lost.endIsDeliverable(nextSeq: 6))
    }
}

/// `StreamChannel` with a shared log: the attached client gets an event only once the log has acknowledged it.
@Suite struct StreamChannelLogTests {
    func delta(_ text: String) -> StreamEvent { .messageDelta(id: "msg_1", delta: text) }

    @Test func anUnacknowledgedEventIsNotDeliveredAndAnAcknowledgementDeliversInOrder() async throws {
        let log = FakeLogWriter()
        let channel = StreamChannel(streamID: "st_log", maxBufferedBytes: 1 << 20, log: log)
        let sink = RecordingSink()
        let generation = channel.attach(sink: sink)
        let reader = Task { try await StreamChannelTests().drain(channel, generation: generation, after: 0) }
        while !channel.subscriberIsParked { await Task.yield() }
        for index in 1...3 { channel.emit(delta("\(index)")) }
        #expect(log.appended.withLock { $0 } == [1, 2, 3], "each event still goes to the log at once")
        #expect(sink.taken.withLock { $0 }.isEmpty, "no event reached the client before the log had it")
        #expect(try channel.poll(after: 0, generation: generation) == .pending)

        log.report(.logged(through: 2))
        #expect(sink.taken.withLock { $0 } == [1, 2], "one acknowledgement releases a batch, in order")
        channel.finish(nil)
        // The end waits behind event 3: the reader's task stays parked.
        #expect(channel.subscriberIsParked)
        log.report(.logged(through: 3))
        let (seqs, _, ended) = try await reader.value
        #expect(ended)
        #expect(sink.taken.withLock { $0 } + seqs == [1, 2, 3])
    }

    @Test func aReaderWithoutASinkIsWokenByTheAcknowledgement() async throws {
        let log = FakeLogWriter()
        let channel = StreamChannel(streamID: "st_log", maxBufferedBytes: 1 << 20, log: log)
        let generation = channel.attach()
        channel.emit(delta("a"))
        channel.emit(delta("b"))
        channel.finish(nil)
        let reader = Task { try await StreamChannelTests().drain(channel, generation: generation, after: 0) }
        while !channel.subscriberIsParked { await Task.yield() }
        log.report(.logged(through: 2))
        let (seqs, _, ended) = try await reader.value
        #expect(seqs == [1, 2] && ended)
    }

    @Test func aStoreFailureDeliversWhatWasHeldAndTheRestWithoutWaiting() throws {
        let log = FakeLogWriter()
        let channel = StreamChannel(streamID: "st_log", maxBufferedBytes: 1 << 20, log: log)
        let generation = channel.attach()
        channel.emit(delta("a"))
        #expect(try channel.poll(after: 0, generation: generation) == .pending)
        log.report(.notResumable)
        guard case .ready(.event(seq: 1, _, _, _)) = try channel.poll(after: 0, generation: generation) else {
            Issue.record("the held event was not released")
            return
        }
        channel.emit(delta("b"))
        guard case .ready(.event(seq: 2, _, _, _)) = try channel.poll(after: 1, generation: generation) else {
            Issue.record("a later event waited for a log that will not get it")
            return
        }
        channel.finish(nil)
        #expect(try channel.poll(after: 2, generation: generation) == .ready(.end(nil)))
    }

    @Test func aStreamLostToAnotherReplicaEndsAfterItsLastLoggedEvent() throws {
        let log = FakeLogWriter()
        let channel = StreamChannel(streamID: "st_log", maxBufferedBytes: 1 << 20, log: log)
        let generation = channel.attach()
        for text in ["a", "b", "c"] { channel.emit(delta(text)) }
        log.report(.logged(through: 1))
        let error = RPCError(.unavailable, "taken over")
        channel.emit(.streamError(error: error.message, details: [:]))
        channel.finish(error)
        #expect(try channel.poll(after: 1, generation: generation) == .pending)
        log.report(.lost)
        #expect(try channel.poll(after: 1, generation: generation) == .ready(.end(error)))
    }

    @Test func aTakenOverStreamDeliversItsLoggedEventsAndHoldsItsOwn() throws {
        let log = FakeLogWriter(firstSeq: 3)
        let channel = StreamChannel(streamID: "st_log", maxBufferedBytes: 1 << 20, log: log)
        for seq in 1...2 {
            channel.record(
                seq: seq, type: "message_delta", frame: StreamEvent.messageDelta(id: "m", delta: "x").encoded(streamID: "st_log", seq: seq))
        }
        channel.emit(delta("own"))
        let generation = channel.attach()
        guard case .ready(.event(seq: 2, _, _, _)) = try channel.poll(after: 1, generation: generation) else {
            Issue.record("an event the log held already was not delivered")
            return
        }
        #expect(try channel.poll(after: 2, generation: generation) == .pending)
        log.report(.logged(through: 3))
        guard case .ready(.event(seq: 3, _, _, _)) = try channel.poll(after: 2, generation: generation) else {
            Issue.record("the acknowledged event was not delivered")
            return
        }
    }
}
