import Metrics
import SluiceIO
import SluiceStore
import SluiceWire

/// Streams this replica does not run: found in the store, followed from its log, cancelled through their owner.
extension StreamEngine {
    /// Events read from the store per request while following a stream.
    static let storeBatch = 256

    /// The stream `streamID` for `caller`, to read after `seq`: this replica's own, or a mirror of another
    /// replica's that replays the store's log from `seq` and follows it until the stream ends.
    public func resumableChannel(_ streamID: String, caller: String, after seq: Int) async throws(RPCError) -> StreamChannel {
        if let record = localRecord(streamID) {
            guard record.owner == caller else { throw notFound(streamID) }
            return record.channel
        }
        let store = configuration.store
        let metadata: StoredStreamMetadata?
        let first: [StoredEvent]
        do {
            metadata = try await store.metadata(streamID)
            first = metadata == nil ? [] : try await store.events(streamID, after: seq, limit: Self.storeBatch)
        } catch {
            throw RPCError(.unavailable, "stream \(streamID) is not on this replica, and \(error.message)")
        }
        guard let metadata, metadata.caller == caller else { throw notFound(streamID) }
        guard metadata.resumable else {
            throw RPCError(
                .dataLoss,
                "stream \(streamID) runs on replica \(metadata.owner), and some of its events never reached the shared store (Redis was down or slow); it can be resumed only there"
            )
        }
        if StreamTakeover.shouldClaim(metadata, hasCapacity: scheduler.active < scheduler.limits.maxActive),
            let channel = try await takeOver(streamID, caller: caller)
        {
            return channel
        }
        let missing = first.first.map { $0.seq > seq + 1 } ?? (metadata.lastSeq.map { $0 > seq } ?? false)
        if missing {
            throw RPCError(
                .dataLoss,
                "events after \(seq) of stream \(streamID) are no longer in the shared store (it keeps about \(configuration.replayBufferBytes) bytes per stream, for \(DurationParsing.format(configuration.retention)) after the end); resume sooner"
            )
        }
        let mirror = StreamChannel(mirroring: streamID, after: seq, maxBufferedBytes: configuration.replayBufferBytes)
        if metadata.status != "running", let lastSeq = metadata.lastSeq, lastSeq == first.last?.seq ?? seq {
            // The whole rest is in hand: the reader sees the end at once (an SSE reader at the end gets its 204).
            for event in first { mirror.record(seq: event.seq, type: event.type, frame: event.frame) }
            mirror.finish(Self.outcome(metadata))
            return mirror
        }
        Task(executorPreference: EventLoop.current) {
            await self.follow(mirror, after: seq, first: first, metadata: metadata)
        }
        return mirror
    }

    /// `start`, with `--max-active-per-key` counted across every replica sharing the store: the caller's slot is taken
    /// in the store first (refused with RESOURCE_EXHAUSTED when all are taken on any replicas), then the stream is
    /// admitted here as usual. While the store cannot be reached, each replica's own per-key limit still holds.
    public func startAnywhere(
        _ request: SendMessageRequest, caller: String, deadline: ContinuousClock.Instant?, executor: (any TaskExecutor)? = nil,
        trace: StreamTrace? = nil
    ) async throws(RPCError) -> StreamChannel {
        guard let limit = configuration.limits.maxActivePerKey, configuration.store.isShared else {
            return try start(request, caller: caller, deadline: deadline, executor: executor, trace: trace)
        }
        let streamID = Self.makeID(prefix: "st_")
        let acquired: Bool?
        do {
            acquired = try await configuration.store.acquireCallerSlot(caller: caller, streamID: streamID, limit: limit)
        } catch {
            logger.warning(
                "cannot count the caller's streams across replicas; only this replica's limit applies",
                metadata: ["error": "\(error.message)"])
            acquired = nil
        }
        if acquired == false {
            metrics.rejected()
            throw RPCError(
                .resourceExhausted,
                "this caller already runs \(limit) streams across the server's replicas (--max-active-per-key); retry when one has finished"
            )
        }
        do {
            return try start(
                request, caller: caller, deadline: deadline, executor: executor, streamID: streamID, holdsCallerSlot: acquired == true,
                trace: trace)
        } catch {
            if acquired == true { configuration.store.releaseCallerSlot(caller: caller, streamID: streamID) }
            throw error
        }
    }

    /// Cancels `streamID` wherever it runs: here, or through the store on its owner (which cancels it within
    /// about 50 ms, the period it collects cancel requests at).
    public func cancelAnywhere(_ streamID: String, caller: String, reason: String) async throws(RPCError) {
        if localRecord(streamID) != nil {
            try cancel(streamID, caller: caller, reason: reason)
            return
        }
        let metadata: StoredStreamMetadata?
        do {
            metadata = try await configuration.store.metadata(streamID)
        } catch {
            throw RPCError(.unavailable, "stream \(streamID) is not on this replica, and \(error.message)")
        }
        guard let metadata, metadata.caller == caller else { throw notFound(streamID) }
        // A stream that has ended is cancelled already, as a local one would be.
        guard metadata.status == "running" else { return }
        do {
            try await configuration.store.requestCancel(streamID, owner: metadata.owner, reason: reason)
        } catch {
            throw RPCError(.unavailable, "stream \(streamID) runs on replica \(metadata.owner), and \(error.message)")
        }
    }

    /// The sweeper's part in takeover: streams nobody reads whose owner's lease lapsed are claimed and finished here
    /// (their answer waits in the log for a later Resume), until `--abandon-grace` ends them like any detached stream.
    func claimLapsedStreams() async {
        let store = configuration.store
        guard store.isShared, store.isUp else { return }
        guard let lapsed = try? await store.lapsedStreams(limit: 16, olderThan: configuration.maxStreamDuration + configuration.retention)
        else { return }
        for streamID in lapsed where localRecord(streamID) == nil {
            guard let metadata = try? await store.metadata(streamID),
                StreamTakeover.shouldClaim(metadata, hasCapacity: scheduler.active < scheduler.limits.maxActive)
            else { continue }
            _ = try? await takeOver(streamID, caller: metadata.caller)
        }
    }

    /// Claims `streamID` (its owner's lease lapsed) and continues it here from its log; nil when another replica
    /// claimed it first or this one has no room (the caller then follows the log).
    private func takeOver(_ streamID: String, caller: String) async throws(RPCError) -> StreamChannel? {
        guard let slot = scheduler.admitNow(key: caller) else { return nil }
        let store = configuration.store
        var logged: [StoredEvent] = []
        let claim: StoredClaim?
        do {
            claim = try await store.claim(streamID)
            // The claim's epoch fences the old owner: the log cannot grow any more while it is read.
            while claim != nil {
                let batch = try await store.events(streamID, after: logged.last?.seq ?? 0, limit: Self.storeBatch)
                logged += batch
                if batch.count < Self.storeBatch { break }
            }
        } catch {
            slot.release()
            throw RPCError(.unavailable, "stream \(streamID) lost its replica, and \(error.message)")
        }
        guard let claim else {
            slot.release()
            return nil
        }
        metrics.tookOver()
        logger.info("took over a stream whose replica was lost", metadata: ["stream_id": "\(streamID)", "epoch": "\(claim.epoch)"])
        var events: [(seq: Int, frame: JSONValue)] = []
        for (index, event) in logged.enumerated() {
            guard event.seq == index + 1, let frame = try? JSONValue(parsing: event.frame) else { break }
            events.append((event.seq, frame))
        }
        let request = try? SendMessageRequest(json: claim.request)
        var stored = StoredStream(streamID: streamID, caller: caller, request: claim.request, maxDuration: configuration.maxStreamDuration)
        stored.epoch = claim.epoch
        stored.firstSeq = (logged.last?.seq ?? 0) + 1
        let channel = StreamChannel(streamID: streamID, maxBufferedBytes: configuration.replayBufferBytes, log: store.open(stored))
        for event in logged.prefix(events.count) { channel.record(seq: event.seq, type: event.type, frame: event.frame) }
        let record = StreamRecord(channel: channel, owner: caller, trace: StreamTrace(traceparent: nil, tracestate: nil))
        registry.withLock {
            $0.streams[streamID] = record
            $0.running[streamID] = record
        }
        let takeover = StreamTakeover(events: events)
        if case .ended(let status, let message) = takeover.next {
            // Its last event was its end: only the metadata's end is missing.
            slot.release()
            channel.finish(StatusCode.named(status).map { RPCError($0, message ?? "") })
            registry.withLock {
                $0.running[streamID] = nil
                $0.finished.append((.now, streamID))
            }
            return channel
        }
        guard let request, events.count == logged.count else {
            // Nothing to continue from: the stream ends here, in the log too, with what went wrong.
            slot.release()
            let error = RPCError(
                .dataLoss, "stream \(streamID) lost its replica, and its log in the shared store is incomplete; it cannot be continued")
            channel.emit(.streamError(error: error.message, details: ["code": .string(error.code.name)]))
            channel.finish(error)
            registry.withLock {
                $0.running[streamID] = nil
                $0.finished.append((.now, streamID))
            }
            return channel
        }
        let deadline = ContinuousClock.now + configuration.maxStreamDuration
        let executor = EventLoop.current
        let job = Task(executorPreference: executor) {
            await self.run(
                request, record: record, admitted: .running(slot), deadline: deadline, deadlineIsClients: false, executor: executor,
                takeover: takeover)
        }
        record.attach(job)
        return channel
    }

    /// Copies a stream this replica took over while `mirror`'s reader followed it into the mirror, as the stream's
    /// attached subscriber (its backpressure applies), until it ends.
    private func relay(_ local: StreamChannel, into mirror: StreamChannel, after seq: Int) async {
        let generation = local.attach(after: seq)
        defer { local.detach(generation) }
        var last = seq
        while true {
            do {
                switch try await local.next(after: last, generation: generation) {
                case .event(let seq, let type, let bytes, _)?:
                    mirror.record(seq: seq, type: type, frame: bytes)
                    last = seq
                    await mirror.waitForReader()
                case .end(let error)?:
                    mirror.finish(error)
                    return
                case nil:
                    mirror.finish(RPCError(.cancelled, "the reader left"))
                    return
                }
            } catch {
                mirror.finish(error)
                return
            }
        }
    }

    /// Copies the store's log into `mirror` until the stream ends or its reader has been gone a while; claims the
    /// stream when its owner's lease lapses meanwhile. Polls the
    /// store (an XRANGE after the last seq, and the metadata when there was nothing new) every 10 ms while it
    /// waits; one shared connection per loop serves every follower.
    private func follow(_ mirror: StreamChannel, after seq: Int, first: [StoredEvent], metadata: StoredStreamMetadata) async {
        let store = configuration.store
        let streamID = mirror.streamID
        let readers = Meter(label: "sluice_store_remote_readers")
        readers.increment()
        defer { readers.decrement() }
        var last = seq
        var batch = first
        var metadata = metadata
        while !Task.isCancelled {
            for event in batch {
                // The log is trimmed from its head: a reader slower than the owner's replay buffer finds a gap.
                guard event.seq == last + 1 else {
                    mirror.finish(
                        RPCError(
                            .dataLoss,
                            "events \(last + 1)–\(event.seq - 1) of stream \(streamID) were trimmed from the shared store before this reader got them (it keeps about \(configuration.replayBufferBytes) bytes per stream); resume sooner"
                        ))
                    return
                }
                mirror.record(seq: event.seq, type: event.type, frame: event.frame)
                last = event.seq
            }
            if !batch.isEmpty { await mirror.waitForReader() }
            if batch.isEmpty {
                if metadata.status != "running", let lastSeq = metadata.lastSeq, last >= lastSeq {
                    mirror.finish(Self.outcome(metadata))
                    return
                }
                // The owner died while this reader followed it: this replica continues the stream.
                if localRecord(streamID) == nil,
                    StreamTakeover.shouldClaim(metadata, hasCapacity: scheduler.active < scheduler.limits.maxActive),
                    let local = try? await takeOver(streamID, caller: metadata.caller)
                {
                    await relay(local, into: mirror, after: last)
                    return
                }
                if let since = mirror.detachedSince, ContinuousClock.now - since > .seconds(2) {
                    mirror.finish(RPCError(.cancelled, "the reader left"))
                    return
                }
                try? await EventLoop.sleep(for: .milliseconds(10))
            }
            do {
                batch = try await store.events(streamID, after: last, limit: Self.storeBatch)
                if batch.isEmpty {
                    guard let current = try await store.metadata(streamID) else {
                        mirror.finish(RPCError(.dataLoss, "stream \(streamID)'s log expired from the shared store while it was read"))
                        return
                    }
                    metadata = current
                }
            } catch {
                // The store is down: the reader waits (its heartbeat or deadline decides), the follower retries.
                batch = []
                try? await EventLoop.sleep(for: .milliseconds(100))
            }
        }
    }
}

extension StreamEngine {
    /// How a finished stream ended, from its metadata: nil for OK.
    fileprivate static func outcome(_ metadata: StoredStreamMetadata) -> RPCError? {
        StatusCode.named(metadata.status).map { RPCError($0, metadata.message ?? "") }
    }
}

extension StatusCode {
    /// The code whose canonical name is `name`; nil for OK (no error) or an unknown name.
    static func named(_ name: String) -> StatusCode? {
        allCases.first { $0.name == name && $0 != .ok }
    }
}
