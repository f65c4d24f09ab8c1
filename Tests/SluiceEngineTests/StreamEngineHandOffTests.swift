import Logging
import SluiceIO
import SluiceStore
import SluiceUpstream
import SluiceWire
import Testing

@testable import SluiceEngine

/// A shared store that records what the engine writes and hands off (the Redis side is StreamHandOffTests).
final class RecordingStore: StreamStore {
    struct Log {
        var appended: [Int] = []
        var finished: (lastSeq: Int, status: String)?
        var handedOffAfter: Int?
    }

    let logs = LockedValue<[String: Log]>([:])
    let acceptsHandOffs: Bool

    init(acceptsHandOffs: Bool = true) {
        self.acceptsHandOffs = acceptsHandOffs
    }

    func log(_ streamID: String) -> Log { logs.withLock { $0[streamID] ?? Log() } }

    /// Acknowledges each event as it is appended, so the channel delivers it at once.
    final class Writer: StreamLogWriter {
        let store: RecordingStore
        let streamID: String
        let firstSeq = 1
        private let progress = LockedValue<(@Sendable (StreamLogProgress) -> Void)?>(nil)

        init(store: RecordingStore, streamID: String) {
            self.store = store
            self.streamID = streamID
        }

        func onProgress(_ handler: @escaping @Sendable (StreamLogProgress) -> Void) { progress.withLock { $0 = handler } }

        func append(seq: Int, type: String, frame: [UInt8]) {
            store.logs.withLock { $0[streamID, default: Log()].appended.append(seq) }
            progress.withLock { $0 }?(.logged(through: seq))
        }

        func finish(lastSeq: Int, status: String, message: String?) {
            store.logs.withLock { $0[streamID, default: Log()].finished = (lastSeq, status) }
        }

        var mayEmit: Bool { true }

        func canHandOff() async -> Bool { store.acceptsHandOffs }

        func handOff(lastSeq: Int) async -> Bool {
            store.logs.withLock { $0[streamID, default: Log()].handedOffAfter = lastSeq }
            return true
        }
    }

    func open(_ stream: StoredStream) -> (any StreamLogWriter)? { Writer(store: self, streamID: stream.streamID) }
    var isUp: Bool { true }
    var isShared: Bool { true }
    func metadata(_ streamID: String) async throws(StoreError) -> StoredStreamMetadata? { nil }
    func events(_ streamID: String, after seq: Int, limit: Int) async throws(StoreError) -> [StoredEvent] { [] }
    func watch(_ streamID: String) -> any StreamLogWatch { PollingStreamLogWatch() }
    func requestCancel(_ streamID: String, owner: String, reason: String) async throws(StoreError) {}
    func acquireCallerSlot(caller: String, streamID: String, limit: Int) async throws(StoreError) -> Bool { true }
    func releaseCallerSlot(caller: String, streamID: String) {}
    func onCancelRequest(_ handler: @escaping @Sendable (String, String) -> Void) {}
    func claim(_ streamID: String) async throws(StoreError) -> StoredClaim? { nil }
    func lapsedStreams(limit: Int, olderThan forgotten: Duration) async throws(StoreError) -> [String] { [] }
    func onLeaseLost(_ handler: @escaping @Sendable (String) -> Void) {}
}

@Suite struct StreamEngineHandOffTests {
    let base = StreamEngineTests()

    func makeEngine(_ upstream: FakeUpstream, store: any StreamStore) -> StreamEngine {
        base.makeEngine(upstream) { $0.store = store }
    }

    /// Two text deltas, then an upstream that waits until it is cancelled.
    static let hangingMessage: [FakeUpstream.Step] = Array(FakeUpstream.message(["Hello", " world"]).prefix(4)) + [.hang]

    /// Reads events until `count` have arrived; returns them and the reader's generation and cursor.
    func read(_ channel: StreamChannel, count: Int) async throws -> (events: [JSONValue], generation: Int) {
        let generation = channel.attach()
        var events: [JSONValue] = []
        while events.count < count,
            case .event(let seq, _, let bytes, _)? = try await channel.next(after: events.count, generation: generation)
        {
            #expect(seq == events.count + 1)
            events.append(try JSONValue(parsing: bytes))
        }
        return (events, generation)
    }

    @Test func aRunningStreamStopsAtAnEventBoundaryWithAMarkerAndIsReleasedAfterIt() async throws {
        let store = RecordingStore()
        let engine = makeEngine(FakeUpstream([Self.hangingMessage]), store: store)
        let channel = try engine.start(StreamEngineTests.request, caller: "a", deadline: nil)
        let (first, generation) = try await read(channel, count: 3)  // message_start and both deltas
        #expect(base.types(first) == ["message_start", "message_delta", "message_delta"])

        await engine.handOffRunningStreams(after: .zero)
        let (rest, end) = try await base.collect(channel, after: 3)
        channel.detach(generation)
        #expect(base.types(rest) == ["stream_handoff"])
        #expect(rest.first?["reason"]?.stringValue == "shutdown" && rest.first?["seq"]?.intValue == 4)
        #expect(end?.code == .unavailable && end?.message == StreamEngine.shuttingDown)
        // Every event up to the marker went to the log before the release, which names the marker's seq; the stream
        // is not finished in the store (another replica continues it).
        let log = store.log(channel.streamID)
        #expect(log.appended == [1, 2, 3, 4])
        #expect(log.handedOffAfter == 4)
        #expect(log.finished == nil)
    }

    @Test func aStreamThatFinishesWithinTheWindowIsNotHandedOff() async throws {
        let store = RecordingStore()
        let engine = makeEngine(FakeUpstream([FakeUpstream.message(["Done"])]), store: store)
        let channel = try engine.start(StreamEngineTests.request, caller: "a", deadline: nil)
        // Returns once no stream runs, long before the window ends.
        await engine.handOffRunningStreams(after: .seconds(600))
        let (events, end) = try await base.collect(channel)
        #expect(end == nil && base.types(events).last == "stream_complete")
        #expect(store.log(channel.streamID).handedOffAfter == nil)
        #expect(store.log(channel.streamID).finished?.status == "OK")
    }

    /// A client that cannot resume (a /v1/messages stream), or a store that could not take the stream: it runs on.
    @Test(arguments: [(StreamRoute.messages, true), (StreamRoute.rpc, false)])
    func aStreamNoOtherReplicaCouldTakeRunsOn(route: StreamRoute, storeAccepts: Bool) async throws {
        let store = RecordingStore(acceptsHandOffs: storeAccepts)
        let engine = makeEngine(FakeUpstream([Self.hangingMessage]), store: store)
        let channel = try engine.start(StreamEngineTests.request, caller: "a", deadline: nil, route: route)
        let (_, generation) = try await read(channel, count: 3)
        channel.detach(generation)
        await engine.handOffRunningStreams(after: .zero)
        #expect(try channel.poll(after: 3, generation: channel.attach(after: 3)) == .pending, "still running")
        #expect(store.log(channel.streamID).handedOffAfter == nil)
        try engine.cancel(channel.streamID, caller: "a", reason: "the test is over")
        let (rest, end) = try await base.collect(channel, after: 3)
        #expect(end?.code == .cancelled && base.types(rest) == ["stream_error"])
    }

    /// Without a shared store a drain is what it always was: nothing is handed off.
    @Test func withTheMemoryStoreNothingIsHandedOff() async throws {
        let engine = base.makeEngine(FakeUpstream([Self.hangingMessage]))
        let channel = try engine.start(StreamEngineTests.request, caller: "a", deadline: nil)
        let (_, generation) = try await read(channel, count: 3)
        channel.detach(generation)
        await engine.handOffRunningStreams(after: .zero)
        #expect(!engine.isHandingOff)
        try engine.cancel(channel.streamID, caller: "a", reason: "the test is over")
        let (rest, end) = try await base.collect(channel, after: 3)
        #expect(end?.code == .cancelled && !base.types(rest).contains("stream_handoff"))
    }
}
