import Logging
import SluiceIO
import Testing

@testable import SluiceStore

/// `RedisStreamStore` against a real `redis-server`: what a stream's keys hold, and what happens to a stream whose
/// writes overflow the queue while Redis is down. Waits poll a condition (Redis or the store), never a fixed time.
@Suite(.serialized, .timeLimit(.minutes(1))) struct RedisStreamStoreTests {
    let loop: EventLoop

    init() throws {
        loop = try EventLoop(index: 0)
        loop.start()
    }

    /// A store on `redis`, once it is up.
    func startedStore(
        _ redis: RedisTestServer, maxQueuedBytes: Int = 1 << 20, lease: Duration = .seconds(5), renewal: Duration = .seconds(1)
    ) async throws -> RedisStreamStore {
        var configuration = RedisStreamStore.Configuration(
            endpoint: try RedisEndpoint(url: redis.url), replicaID: "replica-1", retention: .seconds(60), replayBufferBytes: 1 << 20)
        configuration.maxQueuedBytes = maxQueuedBytes
        configuration.leaseDuration = lease
        configuration.leaseRenewal = renewal
        configuration.backoff = .init(initial: .milliseconds(20), maximum: .milliseconds(100))
        let store = RedisStreamStore(configuration: configuration, loops: [loop], logger: Logger(label: "test"))
        store.start()
        try await until { store.isUp }
        return store
    }

    /// Closes `store` and stops the suite's loop.
    func stop(_ store: RedisStreamStore) {
        store.close()
        loop.stop()
    }

    func until(_ condition: () throws -> Bool) async throws {
        while try !condition() { try await Task.sleep(for: .milliseconds(5)) }
    }

    func frame(_ seq: Int) -> [UInt8] { Array("{\"seq\":\(seq),\"padding\":\"\(String(repeating: "x", count: 200))\"}".utf8) }

    @Test func eventsAppendedOutOfOrderAreLoggedInOrderAndReadBack() async throws {
        let redis = try RedisTestServer()
        let store = try await startedStore(redis)
        defer { stop(store) }
        let writer = try #require(
            store.open(StoredStream(streamID: "st_a", caller: "key-1", request: Array("{}".utf8), maxDuration: .seconds(60))))
        // Concurrent emitters may append 3 before 2; the finish may come before the last event.
        writer.append(seq: 1, type: "message_start", frame: frame(1))
        writer.append(seq: 3, type: "message_delta", frame: frame(3))
        writer.finish(lastSeq: 4, status: "OK", message: nil)
        writer.append(seq: 2, type: "message_delta", frame: frame(2))
        writer.append(seq: 4, type: "stream_complete", frame: frame(4))
        try await until { try redis.cli("HGET", "sluice:{st_a}:meta", "status") == "OK" }
        let events = try await store.events("st_a", after: 1, limit: 10)
        #expect(events.map(\.seq) == [2, 3, 4])
        #expect(events.map(\.type) == ["message_delta", "message_delta", "stream_complete"])
        #expect(events.first?.frame == frame(2))
        let metadata = try #require(try await store.metadata("st_a"))
        #expect(
            metadata == StoredStreamMetadata(owner: "replica-1", caller: "key-1", status: "OK", message: nil, lastSeq: 4, resumable: true))
        #expect(try await store.metadata("st_unknown") == nil)
    }

    @Test func eachRunningStreamsLeaseIsRenewedPastSeveralLeaseDurations() async throws {
        let redis = try RedisTestServer()
        let store = try await startedStore(redis, lease: .seconds(1), renewal: .milliseconds(100))
        defer { stop(store) }
        let streams = ["st_a", "st_b"]
        for streamID in streams {
            _ = try #require(
                store.open(StoredStream(streamID: streamID, caller: "key-1", request: Array("{}".utf8), maxDuration: .seconds(60))))
            try await until { try redis.cli("GET", "sluice:{\(streamID)}:lease") == "replica-1" }
            // The second stream starts part-way through the first one's renewal period: each is renewed on its own phase.
            try await Task.sleep(for: .milliseconds(50))
        }
        // Three lease durations: a lease that were not renewed would lapse within the first.
        let end = ContinuousClock.now + .seconds(3)
        while ContinuousClock.now < end {
            for streamID in streams { #expect(try redis.cli("GET", "sluice:{\(streamID)}:lease") == "replica-1") }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    @Test func writesDroppedWhileRedisIsDownMarkTheStreamNotResumable() async throws {
        let redis = try RedisTestServer(persistent: true)
        let store = try await startedStore(redis, maxQueuedBytes: 4096)
        defer { stop(store) }
        let writer = try #require(store.open(StoredStream(streamID: "st_b", caller: "key-1", request: [], maxDuration: .seconds(60))))
        writer.append(seq: 1, type: "message_start", frame: frame(1))
        try await until { try redis.cli("XLEN", "sluice:{st_b}:log") == "1" }
        redis.stop()
        try await until { !store.isUp }
        // About 60 commands of ~250 bytes: more than the 4 KiB queue holds.
        for seq in 2...60 { writer.append(seq: seq, type: "message_delta", frame: frame(seq)) }
        writer.finish(lastSeq: 60, status: "OK", message: nil)
        // A reader meanwhile is told the store is unreachable, not that the stream does not exist.
        await #expect(throws: StoreError.self) { try await store.metadata("st_b") }
        try redis.start()
        try await until { store.isUp }
        try await until { try redis.cli("HGET", "sluice:{st_b}:meta", "resumable") == "0" }
        let metadata = try #require(try await store.metadata("st_b"))
        #expect(metadata.resumable == false)
        // What was logged is contiguous from seq 1: no entry after the first dropped one.
        let logged = try await store.events("st_b", after: 0, limit: 100).map(\.seq)
        #expect(logged == Array(1...logged.count))
        #expect(logged.count < 60)
    }

    @Test func theWriterReportsWhatRedisHoldsAndAnOutageReleasesTheStream() async throws {
        let redis = try RedisTestServer(persistent: true)
        let store = try await startedStore(redis)
        defer { stop(store) }
        let writer = try #require(store.open(StoredStream(streamID: "st_c", caller: "key-1", request: [], maxDuration: .seconds(60))))
        let progress = LockedValue<[StreamLogProgress]>([])
        writer.onProgress { reported in progress.withLock { $0.append(reported) } }
        for seq in 1...5 { writer.append(seq: seq, type: "message_delta", frame: frame(seq)) }
        try await until { progress.withLock { $0.last } == .logged(through: 5) }
        // Reported only once Redis holds them, in order, a batch of replies at a time.
        #expect(try redis.cli("XLEN", "sluice:{st_c}:log") == "5")
        let reported = progress.withLock { $0 }
        let throughs = reported.compactMap { if case .logged(let seq) = $0 { seq } else { nil } }
        #expect(throughs.count == reported.count && throughs == throughs.sorted() && Set(throughs).count == throughs.count)

        redis.stop()
        try await until { !store.isUp }
        writer.append(seq: 6, type: "message_delta", frame: frame(6))
        // An event the store cannot take does not wait for it.
        try await until { progress.withLock { $0.last } == .notResumable }
        try redis.start()
        try await until { store.isUp }
        try await until { try redis.cli("HGET", "sluice:{st_c}:meta", "resumable") == "0" }
        writer.finish(lastSeq: 6, status: "OK", message: nil)
    }

    /// `redis-cli` output of `PUBSUB NUMSUB` for `streamID`'s channel: its subscriber count.
    func subscribers(_ redis: RedisTestServer, _ streamID: String) throws -> String {
        try redis.cli("PUBSUB", "NUMSUB", RedisKeys.appended(streamID)).split(separator: "\n").last.map(String.init) ?? ""
    }

    /// A wait with no fallback to speak of: it returns only on a notification (else the suite's time limit fails it).
    let forever = Duration.seconds(3600)

    @Test func watchesWakeOnEachAppendShareOneSubscriptionAndResubscribeAfterARestart() async throws {
        let redis = try RedisTestServer(persistent: true)
        let store = try await startedStore(redis)
        defer { stop(store) }
        let writer = try #require(store.open(StoredStream(streamID: "st_w", caller: "key-1", request: [], maxDuration: .seconds(60))))
        let watches = (0..<5).map { _ in store.watch("st_w") }
        let others = (0..<5).map { store.watch("st_other\($0)") }
        try await until { try subscribers(redis, "st_w") == "1" }
        // One command and one subscriber connection for the loop (and redis-cli's own), whatever the watches.
        #expect(try redis.cli("INFO", "clients").contains("connected_clients:3"))
        // The confirmed subscription wakes each watch once: what was appended before it stood is read then.
        for watch in watches { await watch.next(within: forever) }

        writer.append(seq: 1, type: "message_start", frame: frame(1))
        for watch in watches { await watch.next(within: forever) }
        #expect(try await store.events("st_w", after: 0, limit: 10).map(\.seq) == [1])
        #expect(watches.allSatisfy { !$0.endAnnounced })

        redis.stop()
        try await until { !store.isUp }
        try redis.start()
        try await until { try subscribers(redis, "st_w") == "1" }
        // Resubscribed after the reconnect: each watch wakes (it may have missed a notification meanwhile).
        for watch in watches { await watch.next(within: forever) }
        writer.append(seq: 2, type: "message_delta", frame: frame(2))
        writer.finish(lastSeq: 2, status: "OK", message: nil)
        // The append and the end may be announced together or one after the other.
        for watch in watches {
            while !watch.endAnnounced { await watch.next(within: forever) }
        }
        #expect(try await store.events("st_w", after: 1, limit: 10).map(\.seq) == [2])
        #expect(try await store.metadata("st_w")?.status == "OK")

        // The last watch of a stream to close unsubscribes.
        for watch in watches.dropLast() { watch.close() }
        for watch in others { watch.close() }
        try await until { try subscribers(redis, "st_other4") == "0" }
        #expect(try subscribers(redis, "st_w") == "1")
        watches.last?.close()
        try await until { try subscribers(redis, "st_w") == "0" }
        #expect(try redis.cli("INFO", "clients").contains("connected_clients:3"))
    }

    @Test func fencedWritesLandAfterARestartAndAFlushedScriptFailsOnlyTheWritesItRefused() async throws {
        let redis = try RedisTestServer(persistent: true)
        let store = try await startedStore(redis)
        defer { stop(store) }
        let writer = try #require(store.open(StoredStream(streamID: "st_s", caller: "key-1", request: [], maxDuration: .seconds(60))))
        let progress = LockedValue<[StreamLogProgress]>([])
        writer.onProgress { reported in progress.withLock { $0.append(reported) } }
        writer.append(seq: 1, type: "message_start", frame: frame(1))
        try await until { progress.withLock { $0.last } == .logged(through: 1) }
        // A restarted Redis has no scripts: the reconnect loads the fencing script before the queued writes' EVALSHA.
        redis.stop()
        try await until { !store.isUp }
        try redis.start()
        try await until { store.isUp }
        writer.append(seq: 2, type: "message_delta", frame: frame(2))
        try await until { progress.withLock { $0.last } == .logged(through: 2) }
        #expect(try redis.cli("XLEN", "sluice:{st_s}:log") == "2")

        // Flushed while connected: the refused write is not resent out of order; its stream goes on, not resumable.
        _ = try redis.cli("SCRIPT", "FLUSH")
        writer.append(seq: 3, type: "message_delta", frame: frame(3))
        try await until { progress.withLock { $0.last } == .notResumable }
        try await until { try redis.cli("HGET", "sluice:{st_s}:meta", "resumable") == "0" }
        #expect(try redis.cli("XLEN", "sluice:{st_s}:log") == "2")
        // The script is loaded again: the next stream's writes land.
        try await until { try redis.cli("SCRIPT", "EXISTS", RedisLogShard.fencedScriptSHA1) == "1" }
        let next = try #require(store.open(StoredStream(streamID: "st_t", caller: "key-1", request: [], maxDuration: .seconds(60))))
        next.append(seq: 1, type: "message_start", frame: frame(1))
        try await until { try redis.cli("XLEN", "sluice:{st_t}:log") == "1" }
        writer.finish(lastSeq: 3, status: "OK", message: nil)
        next.finish(lastSeq: 1, status: "OK", message: nil)
    }
}
