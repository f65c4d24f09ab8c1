import SluiceIO
import SluiceWire

/// Hand-off on drain: a replica shutting down with a shared store gives its streams to the other replicas instead
/// of running them to the end (or to `--drain-timeout`).
extension StreamEngine {
    /// What the local readers of a handed-off stream, and the followers this replica serves, end with.
    static let shuttingDown =
        "this server is shutting down and handed the stream off: Resume it after its last event (any replica continues it)"

    /// The replica is shutting down and hands its streams off: it claims none.
    var isHandingOff: Bool { handOffs.withLock { $0.started } }

    /// On SIGTERM with a shared store: stops claiming streams, gives the running ones `window` to finish, then hands
    /// the rest off as `HandOffPlan` decides, and returns once the store has released them. A handed-off stream's
    /// readers get a `stream_handoff` event and then UNAVAILABLE; the replica where they Resume claims it at once and
    /// continues it (`upstream_retry` reason `handoff`). The streams it keeps run out the transport's drain as
    /// before. Without a shared store, or on a second call, it returns at once.
    public func handOffRunningStreams(after window: Duration) async {
        guard configuration.store.isShared else { return }
        let first = handOffs.withLock { handOffs in
            defer { handOffs.started = true }
            return !handOffs.started
        }
        guard first else { return }
        // Polled: the registry has no waiters, and this runs once per process for a couple of seconds.
        let windowEnd = ContinuousClock.now + window
        while ContinuousClock.now < windowEnd, registry.withLock({ !$0.running.isEmpty }) {
            try? await EventLoop.sleep(for: min(.milliseconds(50), windowEnd - .now))
        }
        let running = registry.withLock { Array($0.running.values) }
        guard !running.isEmpty else {
            logger.notice("no stream left to hand off")
            return
        }
        let reason = RPCError(.unavailable, Self.shuttingDown)
        var handedOff: [StreamRecord] = []
        var kept = 0
        for record in running {
            let storeCanHandOff = await record.channel.canHandOff()
            let verdict = HandOffPlan.verdict(
                clientCanResume: record.clientCanResume, events: record.channel.bufferedFrames, storeCanHandOff: storeCanHandOff)
            switch verdict {
            case .handOff:
                if record.handOff(reason) { handedOff.append(record) }
            case .keep(let why):
                kept += 1
                logger.notice("keeping a stream through the drain", metadata: ["stream_id": "\(record.channel.streamID)", "why": "\(why)"])
            }
        }
        logger.notice("handing off \(handedOff.count) streams to other replicas", metadata: ["kept": "\(kept)"])
        for record in handedOff { _ = await record.job?.value }
        let acknowledged = handOffs.withLock { $0.acknowledged }
        logger.notice(
            "handed off \(handedOff.count) streams; the store acknowledged \(acknowledged)",
            metadata: ["kept": "\(kept)"])
    }

    /// The end of a stream `handOffRunningStreams` stopped (its upstream was cancelled between two events): the
    /// `stream_handoff` marker, then its local readers end with `reason` while the store releases the stream.
    func endHandingOff(_ record: StreamRecord, _ reason: RPCError) async {
        let channel = record.channel
        channel.emit(.streamHandoff(reason: HandOffPlan.reason))
        let acknowledged = await channel.endForHandOff(reason)
        registry.withLock {
            $0.running[channel.streamID] = nil
            $0.finished.append((.now, channel.streamID))
        }
        if acknowledged { handOffs.withLock { $0.acknowledged += 1 } }
        metrics.handedOff(acknowledged: acknowledged)
        logger.debug("handed a stream off", metadata: ["stream_id": "\(channel.streamID)", "acknowledged": "\(acknowledged)"])
    }
}
