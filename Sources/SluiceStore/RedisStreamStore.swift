import Glibc
import Logging
import Metrics
import SluiceIO
import Synchronization

/// `--store redis://…`: every stream's events, metadata and owner lease in Redis, written by one hiredis connection
/// per event loop (`RedisLogShard`), and followed by remote readers through one subscriber connection per event loop
/// (`RedisSubscriber`): two connections per loop, whatever the number of streams and readers. Keys are hash-tagged
/// by stream (`RedisKeys`), so all of a stream's keys are in one Redis Cluster slot.
public final class RedisStreamStore: StreamStore {
    public struct Configuration: Sendable {
        public var endpoint: RedisEndpoint
        /// This replica's name in the owner lease and metadata.
        public var replicaID: String
        /// Finished streams' keys expire this long after the end (`--retention`).
        public var retention: Duration
        /// The log keeps about this many bytes of frames per stream (`--replay-buffer-bytes`, see `RedisLogShard`).
        public var replayBufferBytes: Int
        /// A running stream's owner lease lasts this long (`--lease-ttl`): another replica may claim the stream
        /// once it lapses.
        public var leaseDuration: Duration = .seconds(5)
        /// The owner renews its leases this often (`--lease-renew`).
        public var leaseRenewal: Duration = .seconds(1)
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
    private let subscribers: [RedisSubscriber]
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
                    health.shardChanged(up: up, total: total)
                })
        }
        self.shards = shards
        subscribers = loops.map { RedisSubscriber(loop: $0, configuration: configuration, logger: logger) }
        Gauge(label: "sluice_store_up").record(0)
    }

    public func start() {
        for shard in shards { shard.loop.execute { shard.start() } }
        for subscriber in subscribers { subscriber.loop.execute { subscriber.start() } }
    }

    /// Closes every connection (after the loops' last streams have finished).
    public func close() {
        for shard in shards { shard.loop.execute { shard.close() } }
        for subscriber in subscribers { subscriber.loop.execute { subscriber.close() } }
    }

    public var isUp: Bool { health.shardsUp.load(ordering: .relaxed) == shards.count }

    /// Every connection has been up at least once since start-up (what `/readyz` waits for).
    public var hasBeenUp: Bool { health.wasUp.load(ordering: .relaxed) }

    /// Connections up now, and whether all have been up at once; shared with the shards' callbacks.
    private final class Health: Sendable {
        let shardsUp = Atomic<Int>(0)
        let wasUp = Atomic<Bool>(false)

        /// A shard's connection went up or down, on its own loop. Shards change on several loops at once, so a
        /// gauge written from the count each one computed could end stale (a shard's "0 of 2" landing after another's
        /// "2 of 2"): each writer reads the count again after writing and writes again if it moved, so the last write
        /// always matches the final count.
        func shardChanged(up: Bool, total: Int) {
            var count = shardsUp.add(up ? 1 : -1, ordering: .sequentiallyConsistent).newValue
            if count == total { wasUp.store(true, ordering: .relaxed) }
            while true {
                Gauge(label: "sluice_store_up").record(count == total ? 1 : 0)
                let now = shardsUp.load(ordering: .sequentiallyConsistent)
                if now == count { return }
                count = now
            }
        }
    }

    // MARK: Reading (other replicas' streams)

    public func metadata(_ streamID: String) async throws(StoreError) -> StoredStreamMetadata? {
        guard case .array(let items) = try await request(["HGETALL", RedisKeys.meta(streamID)]), !items.isEmpty else { return nil }
        var fields: [String: String] = [:]
        for index in stride(from: 0, to: items.count - 1, by: 2) {
            if case .string(let name) = items[index], case .string(let value) = items[index + 1] {
                fields[String(decoding: name, as: UTF8.self)] = String(decoding: value, as: UTF8.self)
            }
        }
        // A hash without them is what is left after Redis lost the stream's keys: no caller can be shown to own it.
        guard let owner = fields["owner"], let caller = fields["caller"], let status = fields["status"] else { return nil }
        var leaseHolder: String?
        var leaseExpiresIn: Duration?
        if status == "running",
            case .array(let lease) = try await request(["EVAL", Self.leaseScript, "1", RedisKeys.lease(streamID)]), lease.count == 2,
            case .string(let holder) = lease[0], case .integer(let milliseconds) = lease[1]
        {
            leaseHolder = String(decoding: holder, as: UTF8.self)
            // A lease always has a TTL (-1 would be one set by hand: then nothing tells when it lapses).
            leaseExpiresIn = milliseconds >= 0 ? .milliseconds(milliseconds) : nil
        }
        var metadata = StoredStreamMetadata(
            owner: owner, caller: caller, status: status, message: fields["message"], lastSeq: fields["last_seq"].flatMap { Int($0) },
            resumable: fields["resumable"] != "0", leaseHolder: leaseHolder)
        metadata.leaseExpiresIn = leaseExpiresIn
        return metadata
    }

    /// The lease's holder and its time to live in milliseconds, in one round trip (an empty array without a lease).
    static let leaseScript = """
        local holder = redis.call('GET', KEYS[1])
        if not holder then return {} end
        return {holder, redis.call('PTTL', KEYS[1])}
        """

    public func watch(_ streamID: String) -> any StreamLogWatch {
        let subscriber =
            EventLoop.current.flatMap { current in subscribers.first { $0.loop === current } }
            ?? subscribers[nextShard.add(1, ordering: .relaxed).oldValue % subscribers.count]
        return subscriber.watch(streamID)
    }

    public func events(_ streamID: String, after seq: Int, limit: Int) async throws(StoreError) -> [StoredEvent] {
        let reply = try await request(["XRANGE", RedisKeys.log(streamID), "(0-\(seq)", "+", "COUNT", "\(limit)"])
        guard case .array(let entries) = reply else { return [] }
        return entries.compactMap { entry in
            guard case .array(let parts) = entry, parts.count == 2, case .string(let id) = parts[0], case .array(let values) = parts[1],
                let seq = String(decoding: id, as: UTF8.self).split(separator: "-").last.flatMap({ Int($0) })
            else { return nil }
            var type = ""
            var frame: [UInt8] = []
            for index in stride(from: 0, to: values.count - 1, by: 2) {
                guard case .string(let name) = values[index], case .string(let value) = values[index + 1] else { continue }
                switch String(decoding: name, as: UTF8.self) {
                case "type": type = String(decoding: value, as: UTF8.self)
                case "frame": frame = value
                default: break
                }
            }
            return StoredEvent(seq: seq, type: type, frame: frame)
        }
    }

    public func requestCancel(_ streamID: String, owner: String, reason: String) async throws(StoreError) {
        _ = try await request(["RPUSH", RedisKeys.cancels(owner), "\(streamID)\n\(reason)"])
        _ = try await request(["PEXPIRE", RedisKeys.cancels(owner), "60000"])
    }

    /// Drops the caller's expired entries, counts the rest, and adds this stream's if there is room: one script, so
    /// two replicas admitting at once cannot both take the last slot.
    static let admitScript = """
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
        if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
        redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
        redis.call('PEXPIRE', KEYS[1], ARGV[5])
        return 1
        """

    public func acquireCallerSlot(caller: String, streamID: String, limit: Int) async throws(StoreError) -> Bool {
        let now = unixMilliseconds()
        let lease = Int(configuration.leaseDuration.milliseconds)
        let reply = try await request([
            "EVAL", Self.admitScript, "1", RedisKeys.callerSlots(caller), "\(now)", "\(limit)", "\(now + lease)", streamID, "\(lease)",
        ])
        return reply == .integer(1)
    }

    public func releaseCallerSlot(caller: String, streamID: String) {
        let shard = pickShard()
        shard.loop.execute { shard.write(["ZREM", RedisKeys.callerSlots(caller), streamID]) }
    }

    public var isShared: Bool { true }

    /// Claims a running stream whose lease lapsed: one script, so of the replicas racing for it one gets the next
    /// epoch and the others nothing. A stream marked not resumable is never claimed: its owner may have delivered
    /// events the log does not hold, and a new owner would number different ones the same.
    static let claimScript = """
        if redis.call('EXISTS', KEYS[2]) == 1 then return false end
        if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return false end
        if redis.call('HGET', KEYS[1], 'resumable') == '0' then return false end
        local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
        redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
        redis.call('HSET', KEYS[1], 'owner', ARGV[1])
        return {epoch, redis.call('HGET', KEYS[1], 'request')}
        """

    public func claim(_ streamID: String) async throws(StoreError) -> StoredClaim? {
        let reply = try await request([
            "EVAL", Self.claimScript, "2", RedisKeys.meta(streamID), RedisKeys.lease(streamID), configuration.replicaID,
            "\(configuration.leaseDuration.milliseconds)",
        ])
        guard case .array(let parts) = reply, parts.count == 2, case .integer(let epoch) = parts[0], case .string(let request) = parts[1]
        else { return nil }
        return StoredClaim(epoch: epoch, request: request)
    }

    /// Drops entries whose lease ended longer ago than any stream may run (their keys have expired), then lists
    /// those whose lease has ended.
    static let lapsedScript = """
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
        return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
        """

    public func lapsedStreams(limit: Int, olderThan forgotten: Duration) async throws(StoreError) -> [String] {
        let now = unixMilliseconds()
        let reply = try await request([
            "EVAL", Self.lapsedScript, "1", RedisKeys.running, "\(now)", "\(now - Int(forgotten.milliseconds))", "\(limit)",
        ])
        guard case .array(let items) = reply else { return [] }
        return items.compactMap { item in
            guard case .string(let id) = item else { return nil }
            return String(decoding: id, as: UTF8.self)
        }
    }

    public func onLeaseLost(_ handler: @escaping @Sendable (String) -> Void) {
        for shard in shards { shard.loop.execute { shard.onLeaseLost = handler } }
    }

    public func onCancelRequest(_ handler: @escaping @Sendable (String, String) -> Void) {
        // The first loop's connection collects this replica's cancel requests.
        let shard = shards[0]
        shard.loop.execute { shard.pollCancelRequests(handler) }
    }

    /// Sends one read on the current loop's connection (or the next one's).
    private func request(_ arguments: [String]) async throws(StoreError) -> RedisReply {
        let shard = pickShard()
        let reply: RedisReply? = await withCheckedContinuation { continuation in
            shard.loop.execute { shard.read(arguments) { continuation.resume(returning: $0) } }
        }
        guard let reply else {
            throw StoreError("the Redis store (\(configuration.endpoint)) is unreachable; try again when it is back")
        }
        if case .error(let message) = reply { throw StoreError("the Redis store refused \(arguments[0]): \(message)") }
        return reply
    }

    private func pickShard() -> RedisLogShard {
        EventLoop.current.flatMap { current in shards.first { $0.loop === current } }
            ?? shards[nextShard.add(1, ordering: .relaxed).oldValue % shards.count]
    }

    public func open(_ stream: StoredStream) -> (any StreamLogWriter)? {
        // The stream's job usually runs on the loop it starts on: its writes then need no thread switch.
        let shard = pickShard()
        let writer = RedisStreamLogWriter(shard: shard, streamID: stream.streamID, firstSeq: stream.firstSeq)
        writer.run { $0.open(stream, writer: writer) }
        return writer
    }
}

/// Writes one stream's log through its shard, on the shard's loop.
final class RedisStreamLogWriter: StreamLogWriter, @unchecked Sendable {
    // Only touched on `shard.loop` (every use goes through `run`).
    private let shard: RedisLogShard
    let streamID: String
    let firstSeq: Int
    /// Set by the channel before its first append, read on the shard's loop as replies arrive.
    private let progressHandler = LockedValue<(@Sendable (StreamLogProgress) -> Void)?>(nil)

    init(shard: RedisLogShard, streamID: String, firstSeq: Int) {
        self.shard = shard
        self.streamID = streamID
        self.firstSeq = firstSeq
    }

    func onProgress(_ handler: @escaping @Sendable (StreamLogProgress) -> Void) {
        progressHandler.withLock { $0 = handler }
    }

    /// Tells the stream's channel (no lock held while it runs).
    func report(_ progress: StreamLogProgress) {
        progressHandler.withLock { $0 }?(progress)
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
        // On the shard's loop (the usual case) without the closure `run` would allocate per event.
        guard shard.loop.inEventLoop else {
            return run { [self] in $0.append(self, seq: seq, type: type, frame: frame) }
        }
        shard.append(self, seq: seq, type: type, frame: frame)
    }

    var mayEmit: Bool { shard.leaseClock.isFresh(within: shard.leaseDuration) }

    func finish(lastSeq: Int, status: String, message: String?) {
        let streamID = streamID
        run { $0.finish(streamID: streamID, lastSeq: lastSeq, status: status, message: message) }
    }

    func canHandOff() async -> Bool {
        let streamID = streamID
        return await withCheckedContinuation { continuation in
            run { continuation.resume(returning: $0.canHandOff(streamID)) }
        }
    }

    func handOff(lastSeq: Int) async -> Bool {
        let streamID = streamID
        return await withCheckedContinuation { continuation in
            run { shard in shard.handOff(streamID: streamID, lastSeq: lastSeq) { continuation.resume(returning: $0) } }
        }
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
    /// A sorted set of the caller's running streams across replicas, scored by when their lease ends.
    public static func callerSlots(_ caller: String) -> String { "sluice:caller:{\(caller)}:active" }
    /// A sorted set of every running stream, scored by when its lease ends (what the sweepers look at).
    public static let running = "sluice:running"
    /// The pub/sub channel on which the owner announces each batch it appended to the log (and the stream's end),
    /// with the last seq written; followers subscribe to it (`RedisSubscriber`) instead of polling the log.
    public static func appended(_ streamID: String) -> String { "sluice:{\(streamID)}:appended" }
    /// A list of `<stream id>\n<reason>` cancel requests for the streams `replica` owns.
    public static func cancels(_ replica: String) -> String { "sluice:cancels:{\(replica)}" }
}

/// Milliseconds since the Unix epoch, for the metadata's times.
func unixMilliseconds() -> Int {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return now.tv_sec * 1000 + now.tv_nsec / 1_000_000
}
