import Logging
import SluiceIO
import SluiceStore
import Synchronization
import Testing

/// Claims and fencing against a real `redis-server`: two replicas' stores, one stream.
@Suite(.serialized) struct StreamClaimTests {
    let request = Array(#"{"model":"m","messages":[]}"#.utf8)

    @Test func oneReplicaWinsALapsedLeaseAndTheOldOwnerIsFencedOut() async throws {
        let redis = try RedisTestServer()
        let (owner, claimer) = try await (StoreReplica.started("a", on: redis), StoreReplica.started("b", on: redis))
        defer {
            owner.stop()
            claimer.stop()
        }
        let (lost, lostContinuation) = AsyncStream<String>.makeStream()
        owner.store.onLeaseLost { lostContinuation.yield($0) }
        let writer = try #require(
            owner.store.open(StoredStream(streamID: "st_1", caller: "key-1", request: request, maxDuration: .seconds(60))))
        writer.append(seq: 1, type: "message_start", frame: Array("one".utf8))
        writer.append(seq: 2, type: "message_delta", frame: Array("two".utf8))
        // A read on the writer's own connection comes back after its writes.
        #expect(try await owner.store.events("st_1", after: 0, limit: 10).map(\.seq) == [1, 2])
        #expect(try await claimer.store.metadata("st_1")?.leaseHolder == "a")
        #expect(try await claimer.store.claim("st_1") == nil, "a live lease is not claimed")

        _ = try redis.cli("DEL", RedisKeys.lease("st_1"))
        #expect(try await claimer.store.metadata("st_1")?.leaseHolder == nil)
        // Marked not resumable (its owner lost the store and served events the log lacks): never claimed.
        _ = try redis.cli("HSET", RedisKeys.meta("st_1"), "resumable", "0")
        #expect(try await claimer.store.claim("st_1") == nil, "a stream marked not resumable was claimed")
        _ = try redis.cli("HSET", RedisKeys.meta("st_1"), "resumable", "1")
        async let first = claimer.store.claim("st_1")
        async let second = claimer.store.claim("st_1")
        let claims = try await [first, second].compactMap { $0 }
        #expect(claims == [StoredClaim(epoch: 2, request: request)], "exactly one of two racing claims wins")

        // The old owner wakes: its next event is refused, and it hears that it lost the stream.
        writer.append(seq: 3, type: "message_delta", frame: Array("stale".utf8))
        var lostStreams = lost.makeAsyncIterator()
        #expect(await lostStreams.next() == "st_1")
        writer.finish(lastSeq: 3, status: "OK", message: nil)

        var continued = StoredStream(streamID: "st_1", caller: "key-1", request: request, maxDuration: .seconds(60))
        continued.epoch = 2
        continued.firstSeq = 3
        let newWriter = try #require(claimer.store.open(continued))
        newWriter.append(seq: 3, type: "message_delta", frame: Array("three".utf8))
        #expect(
            try await claimer.store.events("st_1", after: 2, limit: 10) == [
                StoredEvent(seq: 3, type: "message_delta", frame: Array("three".utf8))
            ])
        let running = try #require(try await claimer.store.metadata("st_1"))
        #expect(running.status == "running" && running.owner == "b" && running.leaseHolder == "b")
        newWriter.finish(lastSeq: 3, status: "OK", message: nil)
        #expect(try await claimer.store.metadata("st_1")?.status == "OK")
        #expect(try await owner.store.events("st_1", after: 0, limit: 10).map(\.seq) == [1, 2, 3])
    }

    @Test func aClaimedStreamTakesItsCallersSlotAlongAndGivesItBackAtTheEnd() async throws {
        let redis = try RedisTestServer()
        let (owner, claimer) = try await (StoreReplica.started("a", on: redis), StoreReplica.started("b", on: redis))
        defer {
            owner.stop()
            claimer.stop()
        }
        #expect(try await owner.store.acquireCallerSlot(caller: "key-1", streamID: "st_2", limit: 1))
        let writer = try #require(
            owner.store.open(
                StoredStream(streamID: "st_2", caller: "key-1", request: request, maxDuration: .seconds(60), holdsCallerSlot: true)))
        writer.append(seq: 1, type: "message_start", frame: Array("one".utf8))
        #expect(try await owner.store.events("st_2", after: 0, limit: 10).count == 1)
        // The owner dies: its lease and (after its lease) its caller slot are gone.
        _ = try redis.cli("DEL", RedisKeys.lease("st_2"))
        _ = try redis.cli("DEL", RedisKeys.callerSlots("key-1"))
        let claim = try #require(try await claimer.store.claim("st_2"))
        var continued = StoredStream(streamID: "st_2", caller: "key-1", request: request, maxDuration: .seconds(60), holdsCallerSlot: true)
        continued.epoch = claim.epoch
        continued.firstSeq = 2
        let newWriter = try #require(claimer.store.open(continued))
        // A read on the claimer's connection comes back after the open's writes.
        _ = try await claimer.store.metadata("st_2")
        #expect(try redis.cli("ZRANGE", RedisKeys.callerSlots("key-1"), "0", "-1") == "st_2")
        #expect(try await claimer.store.acquireCallerSlot(caller: "key-1", streamID: "st_3", limit: 1) == false)
        newWriter.append(seq: 2, type: "stream_complete", frame: Array("two".utf8))
        newWriter.finish(lastSeq: 2, status: "OK", message: nil)
        _ = try await claimer.store.metadata("st_2")
        #expect(try redis.cli("ZCARD", RedisKeys.callerSlots("key-1")) == "0", "no slot leaks after the stream ends")
        #expect(try await claimer.store.acquireCallerSlot(caller: "key-1", streamID: "st_3", limit: 1))
    }
}
