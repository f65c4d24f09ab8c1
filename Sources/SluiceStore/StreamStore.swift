import SluiceIO

/// Where streams are kept beyond the replica's own memory. The engine always keeps each stream's replay buffer in
/// memory and serves its attached client from there; a store adds a shared log for everyone else (other replicas
/// resuming, following or cancelling it).
///
/// The store sees events only as the engine encoded them (frame bytes, seq and type), so it does not depend on the
/// event vocabulary.
public protocol StreamStore: Sendable {
    /// Starts recording `stream`; nil when the store keeps nothing beyond the engine's memory.
    func open(_ stream: StoredStream) -> (any StreamLogWriter)?
    /// The store can take writes now.
    var isUp: Bool { get }
    /// Other replicas share this store (their streams may be found in it).
    var isShared: Bool { get }
    /// What the store knows of a stream another replica may own; nil when it has no such stream.
    func metadata(_ streamID: String) async throws(StoreError) -> StoredStreamMetadata?
    /// Up to `limit` logged events after `seq`, in order.
    func events(_ streamID: String, after seq: Int, limit: Int) async throws(StoreError) -> [StoredEvent]
    /// Wakes a follower of `streamID` (a stream another replica runs) when its log grows or it ends; the follower
    /// closes it when done.
    func watch(_ streamID: String) -> any StreamLogWatch
    /// Asks the replica that owns `streamID` to cancel it.
    func requestCancel(_ streamID: String, owner: String, reason: String) async throws(StoreError)
    /// Takes one of `caller`'s `limit` slots across every replica for `streamID`, leased (renewed while the stream
    /// runs, released when it ends through its writer); false when all are taken.
    func acquireCallerSlot(caller: String, streamID: String, limit: Int) async throws(StoreError) -> Bool
    /// Gives back a slot `acquireCallerSlot` took for a stream that then did not start.
    func releaseCallerSlot(caller: String, streamID: String)
    /// Cancel requests for this replica's streams go to `handler` (set once, before streams start).
    func onCancelRequest(_ handler: @escaping @Sendable (_ streamID: String, _ reason: String) -> Void)
    /// Makes this replica the owner of a running stream whose owner's lease lapsed, atomically (of replicas racing,
    /// one wins; the others get nil and do nothing). The claim's epoch fences every later write of the stream: a
    /// write of an earlier owner is refused.
    func claim(_ streamID: String) async throws(StoreError) -> StoredClaim?
    /// Up to `limit` running streams whose owner's lease has lapsed (for a sweeper to claim), forgetting those whose
    /// lease ended more than `forgotten` ago.
    func lapsedStreams(limit: Int, olderThan forgotten: Duration) async throws(StoreError) -> [String]
    /// This replica lost a stream it runs to another replica's claim (its lease lapsed, e.g. while it was paused):
    /// `handler` aborts it (set once, before streams start).
    func onLeaseLost(_ handler: @escaping @Sendable (_ streamID: String) -> Void)
}

/// A follower's wait for news of a stream another replica runs.
public protocol StreamLogWatch: Sendable {
    /// Returns once the stream's log may have grown or the stream may have ended since the last return (its owner
    /// announced an append or its end), or after `timeout` at the latest: notifications can be lost (a dropped
    /// connection), so the follower looks at the log at least that often.
    func next(within timeout: Duration) async
    /// The owner announced the stream's end: once the follower has read the log that far, the metadata has the
    /// outcome (no more notifications will come).
    var endAnnounced: Bool { get }
    /// Stops watching.
    func close()
}

/// A store without notifications: the follower looks at the log every `timeout`.
public struct PollingStreamLogWatch: StreamLogWatch {
    public init() {}

    public func next(within timeout: Duration) async {
        try? await EventLoop.sleep(for: timeout)
    }

    public var endAnnounced: Bool { false }

    public func close() {}
}

/// A stream this replica claimed: the epoch of its ownership and the request as the client sent it.
public struct StoredClaim: Sendable, Equatable {
    public var epoch: Int
    public var request: [UInt8]

    public init(epoch: Int, request: [UInt8]) {
        self.epoch = epoch
        self.request = request
    }
}

/// The store could not answer (Redis down or refusing); the message says what happened.
public struct StoreError: Error, Sendable, Equatable {
    public var message: String

    public init(_ message: String) {
        self.message = message
    }
}

/// A stream's metadata as the store keeps it.
public struct StoredStreamMetadata: Sendable, Equatable {
    public var owner: String
    public var caller: String
    /// `running`, or the gRPC status name it ended with.
    public var status: String
    public var message: String?
    /// The last seq, once the stream has ended.
    public var lastSeq: Int?
    /// False when some of its events never reached the store.
    public var resumable: Bool
    /// The replica whose lease on the running stream is alive; nil when the lease lapsed (its owner is gone).
    public var leaseHolder: String?
    /// How long the lease has left unless renewed (a follower looks again when it lapses).
    public var leaseExpiresIn: Duration?

    public init(
        owner: String, caller: String, status: String, message: String?, lastSeq: Int?, resumable: Bool, leaseHolder: String? = nil
    ) {
        self.leaseHolder = leaseHolder
        self.owner = owner
        self.caller = caller
        self.status = status
        self.message = message
        self.lastSeq = lastSeq
        self.resumable = resumable
    }
}

/// One logged event: its seq, type and frame as the engine encoded it.
public struct StoredEvent: Sendable, Equatable {
    public var seq: Int
    public var type: String
    public var frame: [UInt8]

    public init(seq: Int, type: String, frame: [UInt8]) {
        self.seq = seq
        self.type = type
        self.frame = frame
    }
}

/// A stream as the store records it when it starts.
public struct StoredStream: Sendable {
    public var streamID: String
    /// The caller's identity (`key-N`, never a token).
    public var caller: String
    /// The request as the client sent it.
    public var request: [UInt8]
    /// How long the stream may run (`--max-stream-duration`): its keys expire this long plus the retention after it
    /// starts, even if no replica is left to finish it.
    public var maxDuration: Duration
    /// The stream holds a caller slot (`acquireCallerSlot`) that its writer renews and releases.
    public var holdsCallerSlot: Bool
    /// The ownership epoch its writes are fenced by: 1 for a new stream, a `StoredClaim`'s for one taken over.
    public var epoch = 1
    /// The first seq this replica writes (after the last one logged, for a stream taken over).
    public var firstSeq = 1

    public init(streamID: String, caller: String, request: [UInt8], maxDuration: Duration, holdsCallerSlot: Bool = false) {
        self.streamID = streamID
        self.caller = caller
        self.request = request
        self.maxDuration = maxDuration
        self.holdsCallerSlot = holdsCallerSlot
    }
}

/// What a stream's shared log has acknowledged, as its writer reports it to the stream's channel.
public enum StreamLogProgress: Sendable, Equatable {
    /// The store holds every event up to `seq`: a replica that took the stream over would continue after it.
    case logged(through: Int)
    /// Some events will never reach the store (it is down, refused a write, or did not answer within the lease); the
    /// stream is marked not resumable elsewhere, so no other replica may claim it, and it goes on locally.
    case notResumable
    /// Another replica claimed the stream (or may have: this one stalled past its lease). Nothing more it emits may
    /// reach a client: the new owner numbers the events after the last one logged.
    case lost
}

/// One stream's writes to the store, from the engine's threads. Appends may arrive out of seq order from
/// concurrent emitters (seqs are assigned under the channel's lock, the append runs after it); the store writes
/// them in order.
public protocol StreamLogWriter: Sendable {
    /// The first seq this writer logs: the ones before it are in the log already (a stream taken over).
    var firstSeq: Int { get }
    /// Where the log's acknowledgements go (`StreamLogProgress`): set once by the stream's channel, before its first
    /// append. Called on the store's threads, at most once per stream per batch of replies.
    func onProgress(_ handler: @escaping @Sendable (StreamLogProgress) -> Void)
    func append(seq: Int, type: String, frame: [UInt8])
    /// The stream ended after `lastSeq` with `status` (a gRPC status name) and, unless OK, `message`.
    func finish(lastSeq: Int, status: String, message: String?)
    /// False while this replica may have lost the stream: it was paused or hung past its lease, so another replica
    /// may continue the stream now. Read from the job's thread before each event.
    var mayEmit: Bool { get }
    /// Another replica could continue the stream from its log now: the store is up, the log has every event so far,
    /// and this replica still owns the stream.
    func canHandOff() async -> Bool
    /// The stream stopped here after `lastSeq` without ending (this replica is shutting down): once the log holds
    /// every event up to `lastSeq`, the stream's lease is released so another replica claims it at once. True once
    /// the store has acknowledged all of it; false when it could not (the stream is then claimed when its lease
    /// lapses, if its log is whole).
    func handOff(lastSeq: Int) async -> Bool
}

/// `--store memory`: the engine's own registry and replay buffers are the whole store (one replica's streams are
/// resumable on that replica only).
public struct MemoryStreamStore: StreamStore {
    public init() {}

    public func open(_ stream: StoredStream) -> (any StreamLogWriter)? { nil }

    public var isUp: Bool { true }

    public var isShared: Bool { false }

    // This replica's registry is the whole store: no stream is anywhere else.
    public func metadata(_ streamID: String) async throws(StoreError) -> StoredStreamMetadata? { nil }

    public func events(_ streamID: String, after seq: Int, limit: Int) async throws(StoreError) -> [StoredEvent] { [] }

    public func watch(_ streamID: String) -> any StreamLogWatch { PollingStreamLogWatch() }

    public func requestCancel(_ streamID: String, owner: String, reason: String) async throws(StoreError) {}

    // The engine's own `Admission` is the whole limit.
    public func acquireCallerSlot(caller: String, streamID: String, limit: Int) async throws(StoreError) -> Bool { true }

    public func releaseCallerSlot(caller: String, streamID: String) {}

    public func onCancelRequest(_ handler: @escaping @Sendable (String, String) -> Void) {}

    // No other replica can run a stream this one started.
    public func claim(_ streamID: String) async throws(StoreError) -> StoredClaim? { nil }

    public func onLeaseLost(_ handler: @escaping @Sendable (String) -> Void) {}

    public func lapsedStreams(limit: Int, olderThan forgotten: Duration) async throws(StoreError) -> [String] { [] }
}
