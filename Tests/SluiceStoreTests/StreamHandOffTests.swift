import Logging
import SluiceIO
import SluiceStore
import Testing

/// Hand-off on drain against a real `redis-server`: the owner lets go of a running stream, and another replica
/// claims it at once, without waiting for the lease to lapse.
@Suite(.serialized) struct StreamHandOffTests {

    let request = Array(#"{"model":"m","messages":[]}"#.utf8)

    func stream(_ id: String, holdsCallerSlot: Bool = false) -> StoredStream {
        StoredStream(streamID: id, caller: "key-1", request: request, maxDuration: .seconds(60), holdsCallerSlot: holdsCallerSlot)
    }

    @Test func aHandedOffStreamIsReleasedAfterItsLastEventAndClaimedAtOnce() async throws {
        let redis = try RedisTestServer()
        let (owner, claimer) = try await (StoreReplica.started("a", on: redis), StoreReplica.started("b", on: redis))
        defer {
            owner.stop()
            claimer.stop()
        }
        #expect(try await owner.store.acquireCallerSlot(caller: "key-1", streamID: "st_h", limit: 1))
        let writer = try #require(owner.store.open(stream("st_h", holdsCallerSlot: true)))
        writer.append(seq: 1, type: "message_start", frame: Array("one".utf8))
        #expect(await writer.canHandOff())
        // The hand-off names seq 3 before it has arrived: it waits for it.
        async let handedOff = writer.handOff(lastSeq: 3)
        writer.append(seq: 3, type: "stream_handoff", frame: Array("three".utf8))
        writer.append(seq: 2, type: "message_delta", frame: Array("two".utf8))
        #expect(await handedOff)

        let metadata = try #require(try await claimer.store.metadata("st_h"))
        #expect(metadata.status == "running" && metadata.leaseHolder == nil, "released, not ended")
        #expect(try await claimer.store.lapsedStreams(limit: 10, olderThan: .seconds(600)) == ["st_h"], "due for the sweepers")
        #expect(
            try await claimer.store.acquireCallerSlot(caller: "key-1", streamID: "st_other", limit: 1), "the caller slot was given back")
        #expect(try await claimer.store.claim("st_h") == StoredClaim(epoch: 2, request: request))
        #expect(try await claimer.store.events("st_h", after: 0, limit: 10).map(\.seq) == [1, 2, 3])

        // The old owner keeps nothing of it: a late write or end is not sent.
        writer.append(seq: 4, type: "message_delta", frame: Array("late".utf8))
        writer.finish(lastSeq: 4, status: "OK", message: nil)
        #expect(!(await writer.canHandOff()))
        #expect(try await claimer.store.events("st_h", after: 0, limit: 10).map(\.seq) == [1, 2, 3])
        #expect(try await claimer.store.metadata("st_h")?.status == "running")
    }

    /// A stream another replica has claimed meanwhile is not the owner's to hand off.
    @Test func aStreamLostToAClaimIsNotHandedOff() async throws {
        let redis = try RedisTestServer()
        let (owner, claimer) = try await (StoreReplica.started("a", on: redis), StoreReplica.started("b", on: redis))
        defer {
            owner.stop()
            claimer.stop()
        }
        let writer = try #require(owner.store.open(stream("st_l")))
        writer.append(seq: 1, type: "message_start", frame: Array("one".utf8))
        #expect(try await owner.store.events("st_l", after: 0, limit: 10).map(\.seq) == [1])
        _ = try redis.cli("DEL", RedisKeys.lease("st_l"))
        #expect(try await claimer.store.claim("st_l")?.epoch == 2)
        #expect(!(await writer.handOff(lastSeq: 1)), "the fence refuses the old owner's release")
        #expect(try await claimer.store.metadata("st_l")?.leaseHolder == "b", "the new owner's lease stands")
    }

    @Test func withRedisDownNothingCanBeHandedOff() async throws {
        let redis = try RedisTestServer()
        let owner = try await StoreReplica.started("a", on: redis)
        defer { owner.stop() }
        let writer = try #require(owner.store.open(stream("st_d")))
        writer.append(seq: 1, type: "message_start", frame: Array("one".utf8))
        redis.stop()
        while owner.store.isUp { try await Task.sleep(for: .milliseconds(5)) }
        #expect(!(await writer.canHandOff()))
    }
}
