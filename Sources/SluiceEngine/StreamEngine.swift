import Logging
import SluiceIO
import SluiceStore
import SluiceUpstream
import SluiceWire

/// Where the engine gets Claude's events: the libcurl client, or a fake in tests.
/// Iteration must stop (and free the transfer) when the iterating task is cancelled.
public protocol MessageUpstream: Sendable {
    associatedtype Events: AsyncSequence<AnthropicEvent, UpstreamFailure>
    func streamMessage(body: [UInt8], headers: [(String, String)]) -> Events
    /// One non-streaming call to another API path (`/v1/messages/count_tokens`), answered as a whole.
    func post(path: String, body: [UInt8], headers: [(String, String)]) async throws(UpstreamFailure) -> UpstreamResponse
}

extension UpstreamClient: MessageUpstream {}

public struct EngineConfiguration: Sendable {
    public var limits = Admission.Limits(maxActive: 256, maxQueued: 1024)
    public var queueTimeout: Duration = .seconds(30)
    public var retry = RetryPolicy()
    public var maxStreamDuration: Duration = .seconds(600)
    /// A detached stream (its client's connection vanished) keeps running this long, awaiting `Resume`.
    public var abandonGrace: Duration = .seconds(30)
    public var replayBufferBytes = 1 << 20
    /// Finished streams stay resumable this long.
    public var retention: Duration = .seconds(60)
    /// The upstream is the simulator: requests may carry a `simulation` scenario.
    public var upstreamIsSimulator = true
    /// Server tools a request may name in `tools`.
    public var tools: [any StreamingTool] = []
    public var toolTimeout: Duration = .seconds(60)
    /// Largest tool result passed back to the model.
    public var maxToolResultBytes = 1 << 20
    public var maxParallelTools = 4
    /// Model turns per stream (each tool round trip is one more turn).
    public var maxTurns = 8
    /// Where streams are kept beyond this replica's memory (`--store`).
    public var store: any StreamStore = MemoryStreamStore()

    public init() {}
}

/// Runs streams: admission, the upstream attempts with retries, and the registry that lets
/// clients resume, cancel and abandon them.
public final class StreamEngine: Sendable {
    public let configuration: EngineConfiguration
    public let scheduler: Scheduler
    package let upstream: any MessageUpstream
    let logger: Logger
    let metrics = EngineMetrics()
    let tools: [String: any StreamingTool]
    let registry = LockedValue(Registry())
    private let sweeper = LockedValue<Task<Void, Never>?>(nil)
    /// Hand-off on drain (`handOffRunningStreams`): whether it has begun (the replica then claims no stream), and how
    /// many hand-offs the store has acknowledged.
    let handOffs = LockedValue((started: false, acknowledged: 0))

    final class StreamRecord: Sendable {
        let channel: StreamChannel
        let owner: String
        let trace: StreamTrace
        /// The front end that started it (for a stream taken over, the one its new reader came by).
        let route: StreamRoute
        /// Its client can resume it on another replica (a /v1/messages client cannot): a drain may hand it off.
        var clientCanResume: Bool { route != .messages }
        /// One lock for all, so a cancel that comes before the job is attached is not lost (the stream is
        /// registered, and can be cancelled by a drain or the sweeper, before its job exists). `handingOff`: the
        /// cancel is a hand-off (`handOff`).
        private let control = LockedValue<(job: Task<Void, Never>?, cancelReason: RPCError?, handingOff: Bool)>((nil, nil, false))

        init(channel: StreamChannel, owner: String, trace: StreamTrace, route: StreamRoute) {
            self.channel = channel
            self.owner = owner
            self.trace = trace
            self.route = route
        }

        /// The first cancel's reason, if any.
        var cancelReason: RPCError? { control.withLock { $0.cancelReason } }

        /// The stream was stopped to be handed off, not cancelled.
        var isHandingOff: Bool { control.withLock { $0.handingOff } }

        var job: Task<Void, Never>? { control.withLock { $0.job } }

        /// Stops the job to hand the stream off, its local readers ending with `reason`; false when it was cancelled
        /// already.
        func handOff(_ reason: RPCError) -> Bool {
            let job = control.withLock { control -> Task<Void, Never>?? in
                guard control.cancelReason == nil else { return nil }
                control.cancelReason = reason
                control.handingOff = true
                return .some(control.job)
            }
            guard let job else { return false }
            job?.cancel()
            return true
        }

        func cancel(_ reason: RPCError) {
            let job = control.withLock { control in
                if control.cancelReason == nil { control.cancelReason = reason }
                return control.job
            }
            job?.cancel()
        }

        func attach(_ job: Task<Void, Never>) {
            let cancelledAlready = control.withLock { control in
                control.job = job
                return control.cancelReason != nil
            }
            if cancelledAlready { job.cancel() }
        }
    }

    /// The queue positions a waiting stream has reported to its client, from threads that may report out of order.
    /// Each one emitted is smaller than the one before; a reporter that finds another emitting leaves its position
    /// to that one, which emits the smallest reported meanwhile when its own emit is done.
    private struct QueuePositions {
        /// The smallest position reported so far.
        var smallest: Int
        /// A reporter is emitting outside the lock.
        var emitting = false

        /// A position was reported: the one to emit now, or nil when it is stale or left to the reporter emitting.
        mutating func report(_ position: Int) -> Int? {
            guard position < smallest else { return nil }
            smallest = position
            guard !emitting else { return nil }
            emitting = true
            return position
        }

        /// `position` was emitted: a smaller one reported meanwhile is next.
        mutating func emitted(_ position: Int) -> Int? {
            if smallest < position { return smallest }
            emitting = false
            return nil
        }
    }

    /// Every stream a client may still resume or cancel. The sweep looks only at running streams (for abandoned
    /// ones) and at the oldest finished ones: with 10,000 streams a pass over all of them 4 × a second cost a few
    /// percent of a core.
    struct Registry {
        var streams: [String: StreamRecord] = [:]
        var running: [String: StreamRecord] = [:]
        /// Finished streams in the order they finished; `finishedHead` is the oldest not yet forgotten.
        var finished: [(at: ContinuousClock.Instant, id: String)] = []
        var finishedHead = 0

        mutating func forgetFinished(before cutoff: ContinuousClock.Instant) {
            while finishedHead < finished.count, finished[finishedHead].at < cutoff {
                streams[finished[finishedHead].id] = nil
                finishedHead += 1
            }
            if finishedHead > 1024, finishedHead * 2 > finished.count {
                finished.removeFirst(finishedHead)
                finishedHead = 0
            }
        }
    }

    /// - Parameter sweepLoop: the event loop whose timer paces the sweep for abandoned and expired streams; without
    ///   one the sweep sleeps on the runtime's timers.
    public init(configuration: EngineConfiguration, upstream: any MessageUpstream, logger: Logger, sweepLoop: EventLoop? = nil) {
        self.configuration = configuration
        self.scheduler = Scheduler(limits: configuration.limits, queueTimeout: configuration.queueTimeout)
        self.tools = Dictionary(configuration.tools.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        self.upstream = upstream
        self.logger = logger
        let sweepTask = Task(executorPreference: sweepLoop) { [weak self] in
            while !Task.isCancelled {
                try? await EventLoop.sleep(for: .milliseconds(250))
                self?.sweep()
                // About once a second, at random ticks so the replicas' sweeps spread out.
                if Int.random(in: 0..<4) == 0 { await self?.claimLapsedStreams() }
            }
        }
        sweeper.withLock { $0 = sweepTask }
        // Another replica's Cancel of a stream this one runs.
        configuration.store.onCancelRequest { [weak self] streamID, reason in
            self?.localRecord(streamID)?.cancel(RPCError(.cancelled, reason))
        }
        // Another replica claimed a stream this one runs (this one was paused past its lease): its log refuses this
        // replica's writes, so the upstream stops at once; an attached client resumes on another replica.
        configuration.store.onLeaseLost { [weak self] streamID in
            self?.localRecord(streamID)?.cancel(
                RPCError(.unavailable, "stream \(streamID) was taken over by another replica (this one lost its lease); Resume it"))
        }
    }

    deinit {
        // Cancelling runs the task's cancellation handlers: outside the lock.
        sweeper.withLock { $0 }?.cancel()
    }

    // MARK: Starting and finding streams

    /// Starts a stream for `caller`; returns its channel (events from seq 1).
    /// - Parameters:
    ///   - executor: where the stream's job runs; the client's event loop saves a thread switch per event.
    ///   - trace: the caller's trace context (a new trace when nil); every upstream attempt is a child span of it.
    ///   - route: the front end the request came through, for the metrics.
    public func start(
        _ request: SendMessageRequest, caller: String, deadline: ContinuousClock.Instant?, executor: (any TaskExecutor)? = nil,
        streamID: String? = nil, holdsCallerSlot: Bool = false, trace: StreamTrace? = nil, route: StreamRoute = .rpc
    ) throws(RPCError) -> StreamChannel {
        if request.simulation != nil && !configuration.upstreamIsSimulator {
            throw RPCError(
                .invalidArgument,
                "'simulation' is only accepted when Sluice runs on its simulator; this server talks to the real Anthropic API")
        }
        if let unknown = request.tools.first(where: { tools[$0] == nil }) {
            let offered = tools.keys.sorted()
            throw RPCError(
                .invalidArgument,
                "unknown tool '\(unknown)': this server offers \(offered.isEmpty ? "no tools (it has no tool roots configured)" : offered.joined(separator: ", "))"
            )
        }
        let admitted: Scheduler.Admitted
        do {
            admitted = try scheduler.admit(key: caller)
        } catch {
            metrics.rejected(route: route)
            throw error
        }
        let streamID = streamID ?? Self.makeID(prefix: "st_")
        let log = configuration.store.open(
            StoredStream(
                streamID: streamID, caller: caller, request: request.json, maxDuration: configuration.maxStreamDuration,
                holdsCallerSlot: holdsCallerSlot))
        let channel = StreamChannel(streamID: streamID, maxBufferedBytes: configuration.replayBufferBytes, log: log)
        let trace = trace ?? StreamTrace(traceparent: nil, tracestate: nil)
        if let reason = trace.ignoredReason {
            logger.debug("started a new trace", metadata: ["stream_id": "\(streamID)", "reason": "\(reason)"])
        }
        let record = StreamRecord(channel: channel, owner: caller, trace: trace, route: route)
        registry.withLock {
            $0.streams[streamID] = record
            $0.running[streamID] = record
        }
        let limit = ContinuousClock.now + configuration.maxStreamDuration
        let effectiveDeadline = deadline.map { min($0, limit) } ?? limit
        let deadlineIsClients = deadline.map { $0 <= limit } ?? false
        // The store has what it keeps of the request's bytes: the job needs only the parsed request.
        var request = request
        request.dropJSON()
        let job = Task(executorPreference: executor) {
            await self.run(
                request, record: record, admitted: admitted, deadline: effectiveDeadline, deadlineIsClients: deadlineIsClients,
                executor: executor
            )
        }
        record.attach(job)
        return channel
    }

    /// The stream `streamID`, if `caller` owns it. Unknown and foreign streams look the same,
    /// so callers cannot probe for other callers' stream ids.
    public func channel(_ streamID: String, caller: String) throws(RPCError) -> StreamChannel {
        try record(streamID, caller: caller).channel
    }

    /// Ends a stream at once: its job is cancelled and its client gets `stream_error` CANCELLED.
    public func cancel(_ streamID: String, caller: String, reason: String) throws(RPCError) {
        try record(streamID, caller: caller).cancel(RPCError(.cancelled, reason))
    }

    private func record(_ streamID: String, caller: String) throws(RPCError) -> StreamRecord {
        guard let record = localRecord(streamID), record.owner == caller else { throw notFound(streamID) }
        return record
    }

    /// The stream `streamID` if this replica runs (or ran) it.
    func localRecord(_ streamID: String) -> StreamRecord? {
        registry.withLock { $0.streams[streamID] }
    }

    func notFound(_ streamID: String) -> RPCError {
        RPCError(
            .notFound,
            "no stream \(streamID) for this caller (it never existed, belongs to another key, or finished more than \(DurationParsing.format(configuration.retention)) ago)"
        )
    }

    public var streamCount: Int { registry.withLock { $0.streams.count } }

    /// Tool definitions for the Messages API request.
    package func toolDefinitions(_ names: [String]) -> [JSONValue] {
        names.compactMap { tools[$0] }.map {
            ["name": .string($0.name), "description": .string($0.description), "input_schema": $0.inputSchema]
        }
    }

    /// `prefix` and 16 random hex digits.
    static func makeID(prefix: String) -> String {
        var generator = SystemRandomNumberGenerator()
        let hex = String(generator.next() as UInt64, radix: 16)
        return prefix + String(repeating: "0", count: 16 - hex.count) + hex
    }

    // MARK: Housekeeping

    /// Cancels streams whose client vanished longer than the grace ago; forgets finished ones after the retention.
    private func sweep() {
        let now = ContinuousClock.now
        let running = registry.withLock { registry in
            registry.forgetFinished(before: now - configuration.retention)
            return Array(registry.running.values)
        }
        // Each channel's state is read outside the registry's lock: no lock is taken while holding another.
        let abandoned = running.filter { record in
            record.channel.detachedSince.map { now - $0 > configuration.abandonGrace } ?? false
        }
        // Cancelled once: the job ends soon after, and is not counted again meanwhile.
        registry.withLock { registry in
            for record in abandoned { registry.running[record.channel.streamID] = nil }
        }
        for record in abandoned {
            metrics.abandoned(route: record.route)
            record.cancel(
                RPCError(
                    .cancelled,
                    "the client disconnected and did not resume within the server's abandon grace of \(DurationParsing.format(configuration.abandonGrace))"
                ))
        }
    }

    // MARK: Running a stream

    func run(
        _ request: SendMessageRequest, record: StreamRecord, admitted: Scheduler.Admitted, deadline: ContinuousClock.Instant,
        deadlineIsClients: Bool, executor: (any TaskExecutor)?, takeover: StreamTakeover? = nil
    ) async {
        let channel = record.channel
        let started = ContinuousClock.now
        var outcome: RPCError?
        let stats = StreamStats()
        do {
            let slot: Scheduler.Slot
            switch admitted {
            case .running(let running):
                slot = running
            case .queued(let ticket, let position):
                channel.emit(.streamQueued(position: position))
                // Updates come from whichever threads release slots, possibly out of order; a position
                // only ever shrinks, so an update that is not smaller than the last one sent is stale.
                // Emitted with no lock held (emit takes the channel's), one reporter at a time.
                let positions = LockedValue(QueuePositions(smallest: position))
                slot = try await withDeadline(deadline, clients: deadlineIsClients, executor: executor) {
                    try await self.scheduler.waitForSlot(ticket: ticket, key: record.owner) { position in
                        var next = positions.withLock { $0.report(position) }
                        while let position = next {
                            channel.emit(.streamQueued(position: position))
                            next = positions.withLock { $0.emitted(position) }
                        }
                    }
                }
            }
            defer { slot.release() }
            try await withDeadline(deadline, clients: deadlineIsClients, executor: executor) {
                var attempts = StreamAttempts(
                    engine: self, request: request, channel: channel, startedAt: started, stats: stats, trace: record.trace,
                    route: record.route)
                try await attempts.run(takeover: takeover)
            }
        } catch let error as RPCError {
            outcome = error
        } catch {
            outcome = record.cancelReason ?? RPCError(.cancelled, "the stream was cancelled")
        }
        if let cancelReason = record.cancelReason, outcome != nil { outcome = cancelReason }
        if let outcome, record.isHandingOff {
            await endHandingOff(record, outcome)
            return
        }
        if let outcome {
            channel.emit(.streamError(error: outcome.message, details: ["code": .string(outcome.code.name)]))
        }
        channel.finish(outcome)
        registry.withLock {
            $0.running[channel.streamID] = nil
            $0.finished.append((.now, channel.streamID))
        }
        metrics.finished(outcome?.code ?? .ok, route: record.route)
        logger.info(
            "stream finished",
            metadata: [
                "stream_id": "\(channel.streamID)", "trace_id": "\(record.trace.traceID)", "caller": "\(record.owner)",
                "route": "\(record.route.rawValue)", "status": "\((outcome?.code ?? .ok).name)",
                "retries": "\(stats.current.retries)", "duration_ms": "\((ContinuousClock.now - started).milliseconds)",
                "input_tokens": "\(stats.current.inputTokens)", "output_tokens": "\(stats.current.outputTokens)",
            ]
        )
    }

    /// Runs `body` in its own task on `executor`, cancelled at `deadline` (then DEADLINE_EXCEEDED) or when this
    /// task is. (An unstructured task does not inherit the job's executor: without it, every upstream event
    /// would hop to the global pool and back.)
    private func withDeadline<T: Sendable>(
        _ deadline: ContinuousClock.Instant, clients: Bool, executor: (any TaskExecutor)?,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let work = Task(executorPreference: executor) { try await body() }
        let timer = DeadlineTimer(after: ContinuousClock.now.duration(to: deadline)) { work.cancel() }
        defer { timer.cancel() }
        do {
            return try await withTaskCancellationHandler {
                try await work.value
            } onCancel: {
                work.cancel()
            }
        } catch {
            guard timer.fired else { throw error }
            let why =
                clients
                ? "the client's deadline (grpc-timeout / connect-timeout-ms) passed"
                : "the stream reached the server's limit of \(DurationParsing.format(configuration.maxStreamDuration)) per stream"
            throw RPCError(.deadlineExceeded, why)
        }
    }
}

extension Duration {
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
