import Logging
import Metrics
import SluiceIO

/// The streams of one event loop and their Redis connection: turns appends and finishes into commands, in seq
/// order, and keeps the owner leases of the loop's running streams alive. Loop-confined.
///
/// Per stream, in Redis:
/// - `XADD sluice:{id}:log MAXLEN ~ <n> 0-<seq> type <type> frame <frame>`: an explicit ID below or equal to the
///   last one is refused by Redis, so a second writer of a seq cannot overwrite the log (the log is its own
///   fencing), and a write sent again after a reconnect cannot duplicate an entry. `<n>` maps
///   `--replay-buffer-bytes` to entries: the buffer's bytes over the stream's mean frame size so far (at least 16),
///   trimmed approximately (`~`, whole radix-tree nodes) so trimming costs Redis almost nothing.
/// - `HSET sluice:{id}:meta …` on start and finish; `SET sluice:{id}:lease <replica> PX <lease>` renewed every third
///   of the lease while it runs, deleted when it ends.
/// - Expiry: on start every key expires after `--max-stream-duration` plus `--retention` (a replica that dies leaves
///   nothing behind for longer); on finish after `--retention`.
final class RedisLogShard: @unchecked Sendable {
    let loop: EventLoop
    private let configuration: RedisStreamStore.Configuration
    private let logger: Logger
    private var connection: RedisConnection!
    private var streams: [String: StreamLog] = [:]
    /// Streams whose writes were dropped while they were not yet marked in Redis as not resumable.
    private var unmarkedIncomplete: Set<String> = []
    private var leaseTimer: TimerID?
    private var up = false
    private var closed = false
    /// Reads waiting for their replies, by tag.
    private var readers: [UInt64: (RedisReply?) -> Void] = [:]
    private var lastTag: UInt64 = 0

    private struct StreamLog {
        /// The next seq to write; later ones wait in `held` until it arrives.
        var nextSeq = 1
        var held: [Int: (type: String, frame: [UInt8])] = [:]
        /// `finish` arrived before every seq up to its last had.
        var pendingFinish: (lastSeq: Int, status: String, message: String?)?
        var frameBytes = 0
        /// `PEXPIRE` for a running stream's keys, in milliseconds.
        var expiry: String
        /// The caller whose cluster-wide slot the stream holds, if it holds one.
        var callerSlot: String?
        /// A write was dropped: nothing more of its log is written (a gap would look like a complete log).
        var incomplete = false
    }

    init(
        loop: EventLoop, configuration: RedisStreamStore.Configuration, logger: Logger, onUpChanged: @escaping @Sendable (Bool) -> Void
    ) {
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        connection = RedisConnection(
            loop: loop, endpoint: configuration.endpoint, maxQueuedBytes: configuration.maxQueuedBytes,
            backoff: configuration.backoff, logger: logger,
            onReply: { [unowned self] command, reply in replied(command, reply) },
            onDropped: { [unowned self] commands in dropped(commands) },
            onUpChanged: { [unowned self] up in
                self.up = up
                if up { markIncomplete() }
                onUpChanged(up)
            })
    }

    func start() {
        connection.start()
        scheduleLeaseRenewal()
    }

    func close() {
        closed = true
        if let leaseTimer { loop.cancelTimer(leaseTimer) }
        leaseTimer = nil
        connection.close()
    }

    // MARK: Writes

    func open(_ stream: StoredStream) {
        let id = stream.streamID
        let expiry = "\((stream.maxDuration + configuration.retention).milliseconds)"
        streams[id] = StreamLog(expiry: expiry, callerSlot: stream.holdsCallerSlot ? stream.caller : nil)
        send(
            [Array("HSET".utf8), Array(RedisKeys.meta(id).utf8)]
                + fields([
                    ("owner", Array(configuration.replicaID.utf8)), ("caller", Array(stream.caller.utf8)), ("request", stream.request),
                    ("status", Array("running".utf8)), ("created_ms", Array("\(unixMilliseconds())".utf8)),
                    ("resumable", Array("1".utf8)),
                ]), id)
        send(["PEXPIRE", RedisKeys.meta(id), expiry], id)
        send(["SET", RedisKeys.lease(id), configuration.replicaID, "PX", "\(configuration.leaseDuration.milliseconds)"], id)
    }

    func append(streamID: String, seq: Int, type: String, frame: [UInt8]) {
        guard var log = streams[streamID] else { return }
        if seq == log.nextSeq {
            write(streamID, &log, seq: seq, type: type, frame: frame)
            while let next = log.held.removeValue(forKey: log.nextSeq) {
                write(streamID, &log, seq: log.nextSeq, type: next.type, frame: next.frame)
            }
        } else if seq > log.nextSeq {
            log.held[seq] = (type, frame)
        }
        streams[streamID] = log
        if let finish = log.pendingFinish, log.nextSeq > finish.lastSeq {
            finishNow(streamID, lastSeq: finish.lastSeq, status: finish.status, message: finish.message)
        }
    }

    func finish(streamID: String, lastSeq: Int, status: String, message: String?) {
        guard var log = streams[streamID] else { return }
        if log.nextSeq > lastSeq || log.incomplete {
            finishNow(streamID, lastSeq: lastSeq, status: status, message: message)
        } else {
            log.pendingFinish = (lastSeq, status, message)
            streams[streamID] = log
        }
    }

    private func write(_ streamID: String, _ log: inout StreamLog, seq: Int, type: String, frame: [UInt8]) {
        log.nextSeq = seq + 1
        guard !log.incomplete else { return }
        log.frameBytes += frame.count
        let entries = max(16, configuration.replayBufferBytes / max(1, log.frameBytes / seq))
        let key = RedisKeys.log(streamID)
        send(
            [
                Array("XADD".utf8), Array(key.utf8), Array("MAXLEN".utf8), Array("~".utf8), Array("\(entries)".utf8),
                Array("0-\(seq)".utf8), Array("type".utf8), Array(type.utf8), Array("frame".utf8), frame,
            ], streamID)
        // The log exists from its first entry on: it expires with the stream's other keys.
        if seq == 1 { send(["PEXPIRE", key, log.expiry], streamID) }
    }

    private func finishNow(_ streamID: String, lastSeq: Int, status: String, message: String?) {
        let log = streams.removeValue(forKey: streamID)
        let incomplete = log?.incomplete ?? false
        if let caller = log?.callerSlot { send(["ZREM", RedisKeys.callerSlots(caller), streamID], streamID) }
        let retention = "\(configuration.retention.milliseconds)"
        var values: [(String, [UInt8])] = [
            ("status", Array(status.utf8)), ("finished_ms", Array("\(unixMilliseconds())".utf8)),
            ("last_seq", Array("\(lastSeq)".utf8)),
        ]
        if let message { values.append(("message", Array(message.utf8))) }
        if incomplete { values.append(("resumable", Array("0".utf8))) }
        send([Array("HSET".utf8), Array(RedisKeys.meta(streamID).utf8)] + fields(values), streamID)
        send(["PEXPIRE", RedisKeys.meta(streamID), retention], streamID)
        send(["PEXPIRE", RedisKeys.log(streamID), retention], streamID)
        send(["DEL", RedisKeys.lease(streamID)], streamID)
    }

    /// A write that belongs to no stream's log.
    func write(_ arguments: [String]) {
        send(arguments, nil)
    }

    private func fields(_ pairs: [(String, [UInt8])]) -> [[UInt8]] {
        pairs.flatMap { [Array($0.0.utf8), $0.1] }
    }

    private func send(_ arguments: [String], _ streamID: String?) {
        send(arguments.map { Array($0.utf8) }, streamID)
    }

    private func send(_ arguments: [[UInt8]], _ streamID: String?) {
        connection.send(.init(arguments, streamID: streamID))
    }

    // MARK: Leases

    private func scheduleLeaseRenewal() {
        leaseTimer = loop.scheduleTimer(after: configuration.leaseDuration / 3) { [weak self] in
            guard let self else { return }
            // While Redis is down the renewals would only pile up in the queue; the leases are renewed once it is back.
            if up {
                markIncomplete()
                let lease = "\(configuration.leaseDuration.milliseconds)"
                let until = "\(unixMilliseconds() + Int(configuration.leaseDuration.milliseconds))"
                for (streamID, log) in streams {
                    send(["SET", RedisKeys.lease(streamID), configuration.replicaID, "PX", lease], streamID)
                    if let caller = log.callerSlot { send(["ZADD", RedisKeys.callerSlots(caller), "XX", until, streamID], streamID) }
                }
            }
            scheduleLeaseRenewal()
        }
    }

    // MARK: Cancel requests

    /// Every 50 ms while Redis is up, takes this replica's cancel requests (one LPOP for all of its streams, so a
    /// remote Cancel reaches the owner within about 50 ms plus a round trip).
    func pollCancelRequests(_ handler: @escaping @Sendable (String, String) -> Void) {
        loop.scheduleTimer(after: .milliseconds(50)) { [weak self] in
            guard let self, !closed else { return }
            read(["LPOP", RedisKeys.cancels(configuration.replicaID), "64"]) { [weak self] reply in
                if case .array(let requests) = reply {
                    for case .string(let request) in requests {
                        let parts = String(decoding: request, as: UTF8.self).split(separator: "\n", maxSplits: 1)
                        handler(String(parts[0]), parts.count > 1 ? String(parts[1]) : "the stream was cancelled on another replica")
                    }
                }
                self?.pollCancelRequests(handler)
            }
        }
    }

    // MARK: Replies

    /// Sends a read; `completion` gets its reply, or nil when Redis is not up (a reader should not wait out an outage).
    func read(_ arguments: [String], completion: @escaping (RedisReply?) -> Void) {
        guard up else {
            completion(nil)
            return
        }
        lastTag += 1
        readers[lastTag] = completion
        var command = RedisConnection.Command(arguments)
        command.tag = lastTag
        connection.send(command)
    }

    private func replied(_ command: RedisConnection.Command, _ reply: RedisReply) {
        if command.tag != 0 {
            readers.removeValue(forKey: command.tag)?(reply)
            return
        }
        guard case .error(let message) = reply else { return }
        let name = String(decoding: command.arguments.first ?? [], as: UTF8.self)
        // A write sent again after a reconnect that had landed before it is refused the same way as a second writer's.
        if name == "XADD", message.contains("equal or smaller") {
            Counter(label: "sluice_store_refused_writes_total").increment()
            logger.debug(
                "the stream log refused an event it already has",
                metadata: ["stream_id": "\(command.streamID ?? "")", "error": "\(message)"])
            return
        }
        Counter(label: "sluice_store_errors_total", dimensions: [("command", name)]).increment()
        logger.warning(
            "the Redis store refused a write",
            metadata: ["command": "\(name)", "stream_id": "\(command.streamID ?? "")", "error": "\(message)"])
    }

    private func dropped(_ commands: [RedisConnection.Command]) {
        for command in commands where command.tag != 0 { readers.removeValue(forKey: command.tag)?(nil) }
        Counter(label: "sluice_store_dropped_commands_total").increment(by: commands.count)
        for streamID in Set(commands.compactMap(\.streamID)) {
            if streams[streamID]?.incomplete == false {
                logger.warning(
                    "the Redis store is not keeping up: this stream is no longer resumable on other replicas",
                    metadata: ["stream_id": "\(streamID)"])
            }
            streams[streamID]?.incomplete = true
            unmarkedIncomplete.insert(streamID)
        }
    }

    /// Tells other replicas not to trust the logs that have gaps (once Redis is up, and at each lease renewal: never
    /// from `dropped`, whose own writes could be dropped in turn).
    private func markIncomplete() {
        let marking = unmarkedIncomplete
        unmarkedIncomplete = []
        for streamID in marking {
            send(["HSET", RedisKeys.meta(streamID), "resumable", "0"], streamID)
            // Redis may have lost the rest of the hash (a restart without persistence): never leave it without expiry.
            send(["PEXPIRE", RedisKeys.meta(streamID), "\(configuration.retention.milliseconds)", "NX"], streamID)
        }
    }
}

extension Duration {
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
