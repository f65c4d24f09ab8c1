import Glibc
import Logging
import Metrics
import SluiceIO
import Synchronization

/// `--store redis://…`: every stream's events, metadata and owner lease in Redis, written by one hiredis connection
/// per event loop (`RedisLogShard`). Keys are hash-tagged by stream (`RedisKeys`), so all of a stream's keys are in
/// one Redis Cluster slot.
public final class RedisStreamStore: StreamStore {
    public struct Configuration: Sendable {
        public var endpoint: RedisEndpoint
        /// This replica's name in the owner lease and metadata.
        public var replicaID: String
        /// Finished streams' keys expire this long after the end (`--retention`).
        public var retention: Duration
        /// The log keeps about this many bytes of frames per stream (`--replay-buffer-bytes`, see `RedisLogShard`).
        public var replayBufferBytes: Int
        /// A running stream's owner lease lasts this long, renewed every third of it.
        public var leaseDuration: Duration = .seconds(10)
        /// Commands each connection queues while Redis is slow or down; past that a stream's further events are not
        /// written and it is marked not resumable elsewhere.
        public var maxQueuedBytes = 16 << 20
        public var backoff = RedisConnectionStateMachine.Backoff()

        public init(endpoint: RedisEndpoint, replicaID: String, retention: Duration, replayBufferBytes: Int) {
            self.endpoint = endpoint
            self.replicaID = replicaID
            self.retention = retention
            self.replayBufferBytes = replayBufferBytes
        }
    }

    public let configuration: Configuration
    private let shards: [RedisLogShard]
    private let health = Health()
    private let nextShard = Atomic<Int>(0)

    /// One connection per loop in `loops`; `start` connects them.
    public init(configuration: Configuration, loops: [EventLoop], logger: Logger) {
        precondition(!loops.isEmpty, "RedisStreamStore needs at least one event loop")
        self.configuration = configuration
        let health = health
        let total = loops.count
        var shards: [RedisLogShard] = []
        for loop in loops {
            shards.append(
                RedisLogShard(loop: loop, configuration: configuration, logger: logger) { up in
                    let count = health.shardsUp.add(up ? 1 : -1, ordering: .relaxed).newValue
                    if count == total { health.wasUp.store(true, ordering: .relaxed) }
                    Gauge(label: "sluice_store_up").record(count == total ? 1 : 0)
                })
        }
        self.shards = shards
        Gauge(label: "sluice_store_up").record(0)
    }

    public func start() {
        for shard in shards { shard.loop.execute { shard.start() } }
    }

    /// Closes every connection (after the loops' last streams have finished).
    public func close() {
        for shard in shards { shard.loop.execute { shard.close() } }
    }

    public var isUp: Bool { health.shardsUp.load(ordering: .relaxed) == shards.count }

    /// Every connection has been up at least once since start-up (what `/readyz` waits for).
    public var hasBeenUp: Bool { health.wasUp.load(ordering: .relaxed) }

    /// Connections up now, and whether all have been up at once; shared with the shards' callbacks.
    private final class Health: Sendable {
        let shardsUp = Atomic<Int>(0)
        let wasUp = Atomic<Bool>(false)
    }

    public func open(_ stream: StoredStream) -> (any StreamLogWriter)? {
        // The stream's job usually runs on the loop it starts on: its writes then need no thread switch.
        let shard =
            EventLoop.current.flatMap { current in shards.first { $0.loop === current } }
            ?? shards[nextShard.add(1, ordering: .relaxed).oldValue % shards.count]
        let writer = RedisStreamLogWriter(shard: shard, streamID: stream.streamID)
        writer.run { $0.open(stream) }
        return writer
    }
}

/// Writes one stream's log through its shard, on the shard's loop.
final class RedisStreamLogWriter: StreamLogWriter, @unchecked Sendable {
    // Only touched on `shard.loop` (every use goes through `run`).
    private let shard: RedisLogShard
    let streamID: String

    init(shard: RedisLogShard, streamID: String) {
        self.shard = shard
        self.streamID = streamID
    }

    func run(_ body: @escaping @Sendable (RedisLogShard) -> Void) {
        if shard.loop.inEventLoop {
            body(shard)
        } else {
            let shard = shard
            shard.loop.execute { body(shard) }
        }
    }

    func append(seq: Int, type: String, frame: [UInt8]) {
        let streamID = streamID
        run { $0.append(streamID: streamID, seq: seq, type: type, frame: frame) }
    }

    func finish(lastSeq: Int, status: String, message: String?) {
        let streamID = streamID
        run { $0.finish(streamID: streamID, lastSeq: lastSeq, status: status, message: message) }
    }
}

/// The keys of one stream. The `{…}` hash tag puts them in one Cluster slot.
public enum RedisKeys {
    /// A Redis Stream of the events: entry ID `0-<seq>`, fields `type` and `frame` (the encoded event).
    public static func log(_ streamID: String) -> String { "sluice:{\(streamID)}:log" }
    /// A hash: owner, caller, request, status, message, created_ms, finished_ms, last_seq, resumable.
    public static func meta(_ streamID: String) -> String { "sluice:{\(streamID)}:meta" }
    /// The owner replica's id while the stream runs, with a TTL it renews.
    public static func lease(_ streamID: String) -> String { "sluice:{\(streamID)}:lease" }
}

/// Milliseconds since the Unix epoch, for the metadata's times.
func unixMilliseconds() -> Int {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return now.tv_sec * 1000 + now.tv_nsec / 1_000_000
}
