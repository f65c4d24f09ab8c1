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

    public init(streamID: String, caller: String, request: [UInt8], maxDuration: Duration) {
        self.streamID = streamID
        self.caller = caller
        self.request = request
        self.maxDuration = maxDuration
    }
}

/// One stream's writes to the store, from the engine's threads. Appends may arrive out of seq order from
/// concurrent emitters (seqs are assigned under the channel's lock, the append runs after it); the store writes
/// them in order.
public protocol StreamLogWriter: Sendable {
    func append(seq: Int, type: String, frame: [UInt8])
    /// The stream ended after `lastSeq` with `status` (a gRPC status name) and, unless OK, `message`.
    func finish(lastSeq: Int, status: String, message: String?)
}

/// `--store memory`: the engine's own registry and replay buffers are the whole store (one replica's streams are
/// resumable on that replica only).
public struct MemoryStreamStore: StreamStore {
    public init() {}

    public func open(_ stream: StoredStream) -> (any StreamLogWriter)? { nil }

    public var isUp: Bool { true }
}
