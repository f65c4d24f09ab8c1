import SluiceWire
import Testing

@testable import SluiceEngine

@Suite struct StreamChannelTests {
    @Test func pollSaysWhatNextWouldReturnWithoutWaiting() throws {
        let channel = StreamChannel(streamID: "st_test", maxBufferedBytes: 1 << 20)
        let generation = channel.attach()
        #expect(try channel.poll(after: 0, generation: generation) == .pending)

        let seq = channel.emit(.messageDelta(id: "msg_1", delta: "hi"))
        guard case .ready(.event(seq: 1, let bytes)) = try channel.poll(after: 0, generation: generation) else {
            Issue.record("the first event is not ready")
            return
        }
        #expect(seq == 1)
        #expect(try JSONValue(parsing: bytes)["delta"] == "hi")
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
        guard case .ready(.event(seq: 2, _)) = try channel.poll(after: 1, generation: generation) else {
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
}
