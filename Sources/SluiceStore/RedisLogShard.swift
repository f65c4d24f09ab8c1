import COpenSSL
import Glibc
import Logging
import Metrics
import SluiceIO
import Synchronization

/// The streams of one event loop and their Redis connection: turns appends and finishes into commands, in seq
/// order, and keeps the owner leases of the loop's running streams alive. Loop-confined.
///
/// Per stream, in Redis:
/// - `XADD sluice:{id}:log MAXLEN ~ <n> 0-<seq> type <type> frame <frame>`: an explicit ID below or equal to the
///   last one is refused by Redis, so a second writer of a seq cannot overwrite the log (the log is its own
///   fencing), and a write sent again after a reconnect cannot duplicate an entry. `<n>` maps
///   `--replay-buffer-bytes` to entries: the buffer's bytes over the stream's mean frame size so far (at least 16),
///   trimmed approximately (`~`, whole radix-tree nodes) so trimming costs Redis almost nothing.
/// - `HSET sluice:{id}:meta …` on start and finish; `SET sluice:{id}:lease <replica> PX <lease>` renewed every
///   `--lease-renew` after the stream's start while it runs (so renewals spread over the period), deleted when it ends.
/// - Expiry: on start every key expires after `--max-stream-duration` plus `--retention` (a replica that dies leaves
///   nothing behind for longer); on finish after `--retention`.
/// - `PUBLISH sluice:{id}:appended <last seq>` (`end <last seq>` once it ended) once per stream per pipeline
///   in which its log grew or it ended, at the end of that pipeline (after its XADDs and its final metadata): remote
///   followers wait for it instead of polling.
/// - Hand-off (the replica is shutting down): after the stream's last event, its `sluice:running` score becomes now,
///   its caller slot is removed and its lease deleted (fenced); the metadata stays `running`, so any replica claims it.
final class RedisLogShard: @unchecked Sendable {
    let loop: EventLoop
    private let configuration: RedisStreamStore.Configuration
    var leaseDuration: Duration { configuration.leaseDuration }
    private let logger: Logger
    private var connection: RedisConnection!
    private var streams: [String: StreamLog] = [:]
    /// Streams whose writes were dropped while they were not yet marked in Redis as not resumable.
    private var unmarkedIncomplete: Set<String> = []
    /// What each stream's log has acknowledged, until its last entry is (kept past the stream's finish for that).
    private var acks: [String: LogAcks] = [:]
    /// Streams with acknowledgements not yet reported to their channels: reported once per loop iteration.
    private var unreportedAcks: [String] = []
    private var leaseTimer: TimerID?
    /// When the loop last ran the lease timer or a write (see `abortIfStalledPastLease`), readable from the streams'
    /// jobs on any thread: a job that wakes with its loop from a pause longer than the lease emits nothing more.
    let leaseClock = LeaseClock()

    final class LeaseClock: Sendable {
        private let lastTick = Atomic<Int64>(LeaseClock.nowNanoseconds)

        /// The loop ran within `lease` (so its leases cannot have lapsed unnoticed).
        func isFresh(within lease: Duration) -> Bool {
            Self.nowNanoseconds - lastTick.load(ordering: .relaxed) <= lease.milliseconds * 1_000_000
        }

        /// Marks the loop as running now; returns whether it had stalled past `lease`.
        func tick(lease: Duration) -> Bool {
            let now = Self.nowNanoseconds
            return now - lastTick.exchange(now, ordering: .relaxed) > lease.milliseconds * 1_000_000
        }

        private static var nowNanoseconds: Int64 {
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
        }
    }
    private var up = false
    private var closed = false
    /// Streams whose log grew (or that ended) since the last pipeline went out, with the last seq written: each gets
    /// one PUBLISH at the end of the next (`announceAppended`).
    private var appended: [String: (lastSeq: Int, ended: Bool)] = [:]
    /// Reads waiting for their replies, by tag.
    private var readers: [UInt64: (RedisReply?) -> Void] = [:]
    private var lastTag: UInt64 = 0

    /// One stream's log entries sent and acknowledged: its channel delivers an event only once Redis holds it.
    private struct LogAcks {
        let writer: RedisStreamLogWriter
        var acknowledged: Int
        var sent: Int
        /// Since when an entry sent has waited for its reply (nil while none waits): past the lease, the stream is
        /// marked not resumable and goes on locally.
        var waitingSince: ContinuousClock.Instant?
        var finished = false
        var unreported = false
    }

    private struct StreamLog {
        /// `RedisKeys.log` and `RedisKeys.meta` of the stream, made once rather than for every event.
        let logKey: String
        let metaKey: String
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
        /// The epoch its writes are fenced by, and whether another replica claimed it.
        var lease: OwnerLease
        /// `handOff` arrived before every seq up to its last had.
        var pendingHandOff: (lastSeq: Int, completion: (Bool) -> Void)?
        /// When its lease is next renewed: each stream one renewal period after its last, so the renewals of a
        /// shard's streams spread over the period instead of reaching Redis as one burst (a burst of fenced scripts
        /// holds up every acknowledgement queued behind it, and delivery waits for those).
        var renewalDue: ContinuousClock.Instant
    }

    /// Runs a stream's write only while `epoch` is still the stream's (`HGET meta epoch`), in one atomic step: a
    /// replica that lost the stream to a claim (which increments the epoch) cannot write another event, renew the
    /// lease or finish the stream, however late its writes arrive.
    static let fencedScript = """
        if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
            return redis.error_reply('FENCED another replica has claimed this stream')
        end
        return redis.call(unpack(ARGV, 2))
        """

    /// The script's SHA1, as `EVALSHA` names it: each write sends these 40 bytes instead of the script (and Redis
    /// hashes nothing). The connection loads the script on every (re)connect before its queued writes go out.
    static let fencedScriptSHA1: String = {
        var digest = [UInt8](repeating: 0, count: Int(SHA_DIGEST_LENGTH))
        let script = Array(fencedScript.utf8)
        _ = SHA1(script, script.count, &digest)
        return digest.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }()

    /// A `SCRIPT LOAD` sent after a `NOSCRIPT` reply (Redis's script cache was flushed while connected) awaits its
    /// reply: one reload for the whole batch of refused writes.
    private var reloadingScript = false

    /// This replica lost a stream it runs to another replica's claim.
    var onLeaseLost: @Sendable (String) -> Void = { _ in }

    init(
        loop: EventLoop, configuration: RedisStreamStore.Configuration, logger: Logger, onUpChanged: @escaping @Sendable (Bool) -> Void
    ) {
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        connection = RedisConnection(
            loop: loop, endpoint: configuration.endpoint, maxQueuedBytes: configuration.maxQueuedBytes,
            backoff: configuration.backoff, scripts: [Self.fencedScript], logger: logger,
            onReply: { [unowned self] command, reply in replied(command, reply) },
            onDropped: { [unowned self] commands in dropped(commands) },
            onUpChanged: { [unowned self] up in
                self.up = up
                if up { markIncomplete() } else { connectionLost() }
                onUpChanged(up)
            },
            beforeWrite: { [unowned self] in announceAppended() })
    }

    /// The connection dropped: the streams whose events await their replies go on locally, not resumable elsewhere
    /// (their clients would otherwise wait for the store to come back).
    private func connectionLost() {
        for (streamID, waiting) in acks where waiting.acknowledged < waiting.sent {
            failLog(
                streamID,
                because: "lost the Redis store with events of this stream unacknowledged: it is no longer resumable on other replicas")
        }
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

    func open(_ stream: StoredStream, writer: RedisStreamLogWriter) {
        let id = stream.streamID
        let expiry = "\((stream.maxDuration + configuration.retention).milliseconds)"
        streams[id] = StreamLog(
            logKey: RedisKeys.log(id), metaKey: RedisKeys.meta(id), nextSeq: stream.firstSeq, expiry: expiry,
            callerSlot: stream.holdsCallerSlot ? stream.caller : nil,
            lease: OwnerLease(epoch: stream.epoch), renewalDue: .now + configuration.leaseRenewal)
        acks[id] = LogAcks(writer: writer, acknowledged: stream.firstSeq - 1, sent: stream.firstSeq - 1)
        // Every replica's sweeper finds the stream here if its lease lapses.
        let leaseEnd = unixMilliseconds() + Int(configuration.leaseDuration.milliseconds)
        send(["ZADD", RedisKeys.running, "\(leaseEnd)", id], id)
        // A claimed stream's lease, owner and epoch were set by the claim. Its caller slot moves with it: the entry
        // its lost owner renewed is taken again, whatever the caller's count (it is the same stream, not a new one).
        guard stream.epoch == 1 else {
            if stream.holdsCallerSlot { send(["ZADD", RedisKeys.callerSlots(stream.caller), "\(leaseEnd)", id], id) }
            return
        }
        // The lease before the metadata: a reader that finds the stream running finds its lease too (else it would
        // claim a stream that has just started).
        send(["SET", RedisKeys.lease(id), configuration.replicaID, "PX", "\(configuration.leaseDuration.milliseconds)"], id)
        send(
            [Array("HSET".utf8), Array(RedisKeys.meta(id).utf8)]
                + fields([
                    ("owner", Array(configuration.replicaID.utf8)), ("caller", Array(stream.caller.utf8)), ("request", stream.request),
                    ("status", Array("running".utf8)), ("created_ms", Array("\(unixMilliseconds())".utf8)),
                    ("resumable", Array("1".utf8)), ("epoch", Array("1".utf8)),
                ]), id)
        send(["PEXPIRE", RedisKeys.meta(id), expiry], id)
    }

    func append(_ writer: RedisStreamLogWriter, seq: Int, type: String, frame: [UInt8]) {
        abortIfStalledPastLease()
        let streamID = writer.streamID
        guard var log = streams[streamID] else {
            // Not open (or no longer written): the event cannot be logged, and must not wait for it.
            unmarkedIncomplete.insert(streamID)
            writer.report(.notResumable)
            return
        }
        // The store is down: the event would wait in the queue while its client waits for it.
        if !up, !log.incomplete, seq >= log.nextSeq {
            failLog(streamID, because: "the Redis store is down: this stream is no longer resumable on other replicas")
            log = streams[streamID] ?? log
        }
        if seq == log.nextSeq {
            write(streamID, &log, seq: seq, type: type, frame: frame)
            while let next = log.held.removeValue(forKey: log.nextSeq) {
                write(streamID, &log, seq: log.nextSeq, type: next.type, frame: next.frame)
            }
            if !log.incomplete, log.lease.mayWrite { announce(streamID, lastSeq: log.nextSeq - 1, ended: false) }
        } else if seq > log.nextSeq {
            log.held[seq] = (type, frame)
        }
        streams[streamID] = log
        if let finish = log.pendingFinish, log.nextSeq > finish.lastSeq {
            finishNow(streamID, lastSeq: finish.lastSeq, status: finish.status, message: finish.message)
        }
        if let handOff = log.pendingHandOff, log.nextSeq > handOff.lastSeq {
            handOffNow(streamID, completion: handOff.completion)
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
        let key = log.logKey
        if log.lease.mayWrite {
            // Built in place: the write path's one command per event.
            var xadd = fenced(log, streamID, key: key, count: 10, capacity: 2 * key.utf8.count + type.utf8.count + frame.count)
            xadd.append("XADD")
            xadd.append(key)
            xadd.append("MAXLEN")
            xadd.append("~")
            xadd.append("\(entries)")
            xadd.append("0-\(seq)")
            xadd.append("type")
            xadd.append(type)
            xadd.append("frame")
            xadd.append(frame)
            xadd.logSeq = seq
            connection.send(xadd)
        }
        if var sent = acks[streamID], log.lease.mayWrite {
            sent.sent = seq
            if sent.waitingSince == nil { sent.waitingSince = .now }
            acks[streamID] = sent
        }
        // The log exists from its first entry on: it expires with the stream's other keys.
        if seq == 1 { send(["PEXPIRE", key, log.expiry], streamID) }
    }

    private func finishNow(_ streamID: String, lastSeq: Int, status: String, message: String?) {
        guard let log = streams.removeValue(forKey: streamID), log.lease.mayWrite else { return }
        if var finished = acks[streamID] {
            finished.finished = true
            acks[streamID] = finished.acknowledged >= finished.sent && !finished.unreported ? nil : finished
        }
        let incomplete = log.incomplete
        send(["ZREM", RedisKeys.running, streamID], streamID)
        if let caller = log.callerSlot { send(["ZREM", RedisKeys.callerSlots(caller), streamID], streamID) }
        let retention = "\(configuration.retention.milliseconds)"
        var values: [(String, [UInt8])] = [
            ("status", Array(status.utf8)), ("finished_ms", Array("\(unixMilliseconds())".utf8)),
            ("last_seq", Array("\(lastSeq)".utf8)),
        ]
        if let message { values.append(("message", Array(message.utf8))) }
        if incomplete { values.append(("resumable", Array("0".utf8))) }
        let meta = RedisKeys.meta(streamID)
        sendFenced(log, streamID, key: meta, [Array("HSET".utf8), Array(meta.utf8)] + fields(values))
        sendFenced(log, streamID, key: meta, ["PEXPIRE", meta, retention].map { Array($0.utf8) })
        send(["PEXPIRE", RedisKeys.log(streamID), retention], streamID)
        sendFenced(log, streamID, key: RedisKeys.lease(streamID), ["DEL", RedisKeys.lease(streamID)].map { Array($0.utf8) })
        announce(streamID, lastSeq: lastSeq, ended: true)
    }

    /// Followers of `streamID` are told that its log grew to `lastSeq` (and that the stream `ended`), at the end of
    /// the pipeline that carries the write (the caller has just sent one): `announceAppended` runs before it goes out.
    private func announce(_ streamID: String, lastSeq: Int, ended: Bool) {
        appended[streamID] = (lastSeq, ended)
    }

    private func announceAppended() {
        // No stream ID: a dropped announcement costs followers only a fallback poll, not the stream's log.
        for (streamID, news) in appended {
            send(["PUBLISH", RedisKeys.appended(streamID), news.ended ? "end \(news.lastSeq)" : "\(news.lastSeq)"], nil)
        }
        appended.removeAll(keepingCapacity: true)
    }

    // MARK: Hand-off

    /// Another replica could continue `streamID` from its log now: Redis is up, none of its writes was dropped, and
    /// it is still this replica's.
    func canHandOff(_ streamID: String) -> Bool {
        guard up, let log = streams[streamID] else { return false }
        return !log.incomplete && log.lease.mayWrite
    }

    /// Once every event up to `lastSeq` is written: the stream leaves this replica (no more renewals), its lease is
    /// deleted, it is due at once in the sweepers' index and its caller slot is given back, so the replica its client
    /// re-attaches to (or, if nobody does, a sweeper) claims it without waiting for the lease to lapse.
    /// `completion(true)` once Redis has acknowledged the lease's release: on the same connection, after every
    /// earlier write of the stream.
    func handOff(streamID: String, lastSeq: Int, completion: @escaping (Bool) -> Void) {
        guard var log = streams[streamID] else { return completion(false) }
        guard log.nextSeq > lastSeq else {
            // Events up to `lastSeq` emitted on other threads are still on their way to this loop.
            log.pendingHandOff = (lastSeq, completion)
            streams[streamID] = log
            return
        }
        handOffNow(streamID, completion: completion)
    }

    private func handOffNow(_ streamID: String, completion: @escaping (Bool) -> Void) {
        guard let log = streams.removeValue(forKey: streamID), log.lease.mayWrite, !log.incomplete else { return completion(false) }
        send(["ZADD", RedisKeys.running, "XX", "\(unixMilliseconds())", streamID], streamID)
        if let caller = log.callerSlot { send(["ZREM", RedisKeys.callerSlots(caller), streamID], streamID) }
        let lease = RedisKeys.lease(streamID)
        sendFenced(log, streamID, key: lease, ["DEL", lease].map { Array($0.utf8) }) { reply in
            // 1, or 0 if the lease had lapsed already; an error (FENCED: another replica has the stream) or none
            // (Redis went away before answering) is a failure.
            if case .integer(_)? = reply { completion(true) } else { completion(false) }
        }
    }

    /// A write that belongs to no stream's log.
    func write(_ arguments: [String]) {
        send(arguments, nil)
    }

    private func fields(_ pairs: [(String, [UInt8])]) -> [[UInt8]] {
        pairs.flatMap { [Array($0.0.utf8), $0.1] }
    }

    /// `command` (whose key is `key`) through `fencedScript`, by the stream's epoch; nothing once it was lost.
    /// `reply`, if given, gets Redis's answer (nil when the command was dropped).
    private func sendFenced(
        _ log: StreamLog, _ streamID: String, key: String, _ command: [[UInt8]], reply: ((RedisReply?) -> Void)? = nil
    ) {
        guard log.lease.mayWrite else { return }
        var fenced = fenced(log, streamID, key: key, count: command.count, capacity: command.reduce(0) { $0 + $1.count })
        for argument in command { fenced.append(argument) }
        if let reply {
            lastTag += 1
            readers[lastTag] = reply
            fenced.tag = lastTag
        }
        connection.send(fenced)
    }

    /// `EVALSHA` of `fencedScript` with the fence's arguments; the caller appends the `count` arguments of the command
    /// it fences (whose key is `key`, `capacity` bytes in all).
    private func fenced(_ log: StreamLog, _ streamID: String, key: String, count: Int, capacity: Int) -> RedisConnection.Command {
        let meta = log.metaKey
        var command = RedisConnection.Command(
            count: 6 + count, capacity: 64 + meta.utf8.count + key.utf8.count + capacity, streamID: streamID)
        command.append("EVALSHA")
        command.append(Self.fencedScriptSHA1)
        command.append("2")
        command.append(meta)
        command.append(key)
        command.append("\(log.lease.epoch)")
        return command
    }

    private func send(_ arguments: [String], _ streamID: String?) {
        connection.send(.init(arguments, streamID: streamID))
    }

    private func send(_ arguments: [[UInt8]], _ streamID: String?) {
        connection.send(.init(arguments, streamID: streamID))
    }

    // MARK: Leases

    /// Aborts `streamID` (once) if this replica still ran it.
    private func lose(_ streamID: String, because why: String) {
        guard streams[streamID]?.lease.lose() == true else { return }
        logger.warning("\(why)", metadata: ["stream_id": "\(streamID)"])
        // Nothing it has not logged may reach its client now: the new owner numbers other events the same.
        acks.removeValue(forKey: streamID)?.writer.report(.lost)
        onLeaseLost(streamID)
    }

    /// A loop that did not run for longer than the lease (the process was paused, or hung) must assume that other
    /// replicas claimed its streams meanwhile: it aborts them before it writes or emits more of them (its writes
    /// would be refused by the fence anyway, but only after its upstream had run on).
    private func abortIfStalledPastLease() {
        guard leaseClock.tick(lease: configuration.leaseDuration) else { return }
        for streamID in streams.keys {
            lose(streamID, because: "this replica stalled past its lease: another replica may own this stream, so it stops here")
        }
    }

    /// How often the shard looks for leases due: a tenth of the renewal period, so a lease is renewed at most that
    /// much late.
    private var renewalTick: Duration { configuration.leaseRenewal / 10 }

    private func scheduleLeaseRenewal() {
        leaseTimer = loop.scheduleTimer(after: renewalTick) { [weak self] in
            guard let self else { return }
            abortIfStalledPastLease()
            // A store that stopped answering (connected, but hung or overloaded) must not hold a stream's client longer.
            let now = ContinuousClock.now
            for (streamID, waiting) in acks where waiting.waitingSince.map({ now - $0 > configuration.leaseDuration }) ?? false {
                failLog(
                    streamID,
                    because:
                        "the Redis store did not acknowledge this stream's events within the lease: it is no longer resumable on other replicas",
                    markNow: up)
            }
            // While Redis is down the renewals would only pile up in the queue; the leases are renewed once it is back.
            if up {
                markIncomplete()
                let lease = "\(configuration.leaseDuration.milliseconds)"
                let until = "\(unixMilliseconds() + Int(configuration.leaseDuration.milliseconds))"
                var renewed: [String] = []
                for (streamID, log) in streams where log.lease.mayWrite && log.renewalDue <= now {
                    let key = RedisKeys.lease(streamID)
                    sendFenced(log, streamID, key: key, ["SET", key, configuration.replicaID, "PX", lease].map { Array($0.utf8) })
                    if let caller = log.callerSlot { send(["ZADD", RedisKeys.callerSlots(caller), "XX", until, streamID], streamID) }
                    renewed.append(streamID)
                }
                for streamID in renewed { streams[streamID]?.renewalDue = now + configuration.leaseRenewal }
                renewRunning(renewed, until: until)
            }
            scheduleLeaseRenewal()
        }
    }

    /// Moves `streamIDs`' ends in the sweepers' index to `until`: one ZADD per 256 streams rather than one per stream
    /// each renewal period. Not tied to a stream: a dropped one
    /// leaves old scores, and a sweeper finds their leases still held (the claim script checks the lease itself).
    private func renewRunning(_ streamIDs: [String], until: String) {
        for start in stride(from: 0, to: streamIDs.count, by: 256) {
            let chunk = streamIDs[start..<min(start + 256, streamIDs.count)]
            var command = RedisConnection.Command(
                count: 3 + 2 * chunk.count, capacity: 32 + chunk.reduce(0) { $0 + until.utf8.count + $1.utf8.count })
            command.append("ZADD")
            command.append(RedisKeys.running)
            command.append("XX")
            for streamID in chunk {
                command.append(until)
                command.append(streamID)
            }
            connection.send(command)
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

    private func replied(_ command: RedisConnection.Command, _ reply: RedisReplyView) {
        if command.tag != 0 {
            readers.removeValue(forKey: command.tag)?(reply.copy())
            return
        }
        guard let message = reply.errorMessage else {
            if command.logSeq > 0, let streamID = command.streamID { acknowledge(streamID, through: command.logSeq) }
            return
        }
        var name = String(decoding: command.arguments.first ?? [], as: UTF8.self)
        if name == "EVALSHA", command.arguments.count > 6 { name = String(decoding: command.arguments[6], as: UTF8.self) }
        if message.hasPrefix("FENCED"), let streamID = command.streamID {
            Counter(label: "sluice_store_fenced_writes_total").increment()
            lose(streamID, because: "another replica claimed this stream (this replica's lease lapsed): it stops here")
            return
        }
        // The script cache was flushed (`SCRIPT FLUSH`) while connected: the writes already sent after this one are
        // refused too, and resending them after later ones would be refused by the log's order. Their streams go on
        // locally, not resumable elsewhere, like any refused write; the script is loaded again for the others.
        if message.hasPrefix("NOSCRIPT") {
            Counter(label: "sluice_store_errors_total", dimensions: [("command", name)]).increment()
            if !reloadingScript {
                reloadingScript = true
                logger.warning(
                    "the Redis store lost the fencing script (SCRIPT FLUSH?); loading it again", metadata: ["error": "\(message)"])
                read(["SCRIPT", "LOAD", Self.fencedScript]) { [weak self] _ in self?.reloadingScript = false }
            }
            if let streamID = command.streamID {
                failLog(
                    streamID, because: "the Redis store lost the fencing script: this stream is no longer resumable on other replicas",
                    markNow: true)
            }
            return
        }
        // A write sent again after a reconnect that had landed before it is refused the same way as a second writer's.
        if name == "XADD", message.contains("equal or smaller") {
            if command.logSeq > 0, let streamID = command.streamID { acknowledge(streamID, through: command.logSeq) }
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
        if command.logSeq > 0, let streamID = command.streamID {
            failLog(
                streamID, because: "the Redis store refused an event of this stream: it is no longer resumable on other replicas",
                markNow: true)
        }
    }

    // MARK: Acknowledgements

    /// Redis holds `streamID`'s log through `seq` (its replies come in order): its channel hears of it at the end of
    /// this loop iteration, once for all the replies of the batch.
    private func acknowledge(_ streamID: String, through seq: Int) {
        guard var progress = acks[streamID], seq > progress.acknowledged else { return }
        progress.acknowledged = seq
        progress.waitingSince = seq >= progress.sent ? nil : .now
        if !progress.unreported {
            progress.unreported = true
            if unreportedAcks.isEmpty { loop.execute { [weak self] in self?.reportAcknowledgements() } }
            unreportedAcks.append(streamID)
        }
        acks[streamID] = progress
    }

    private func reportAcknowledgements() {
        let reporting = unreportedAcks
        unreportedAcks = []
        for streamID in reporting {
            guard var progress = acks[streamID], progress.unreported else { continue }
            progress.unreported = false
            acks[streamID] = progress.finished && progress.acknowledged >= progress.sent ? nil : progress
            progress.writer.report(.logged(through: progress.acknowledged))
        }
    }

    /// Some of `streamID`'s events will not reach the log: nothing more of it is written, Redis is told it is not
    /// resumable (`markIncomplete`: at once when `markNow`, on a connection that takes commands, so the mark goes
    /// before the client gets what was held; else once Redis is back), and its channel delivers what it held.
    private func failLog(_ streamID: String, because why: String, markNow: Bool = false) {
        if streams[streamID]?.incomplete == false {
            logger.warning("\(why)", metadata: ["stream_id": "\(streamID)"])
            streams[streamID]?.incomplete = true
        }
        unmarkedIncomplete.insert(streamID)
        if markNow { markIncomplete() }
        acks.removeValue(forKey: streamID)?.writer.report(.notResumable)
    }

    private func dropped(_ commands: [RedisConnection.Command]) {
        for command in commands where command.tag != 0 { readers.removeValue(forKey: command.tag)?(nil) }
        Counter(label: "sluice_store_dropped_commands_total").increment(by: commands.count)
        for streamID in Set(commands.compactMap(\.streamID)) {
            failLog(streamID, because: "the Redis store is not keeping up: this stream is no longer resumable on other replicas")
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
