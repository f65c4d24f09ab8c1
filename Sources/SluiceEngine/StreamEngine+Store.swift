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

    /// Copies the store's log into `mirror` until the stream ends or its reader has been gone a while. Polls the
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
