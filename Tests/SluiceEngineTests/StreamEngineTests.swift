import Dispatch
import Logging
import SluiceIO
import SluiceUpstream
import SluiceWire
import Testing

@testable import SluiceEngine

@Suite struct StreamEngineTests {
    static let request = try! SendMessageRequest(
        json: Array(#"{"model":"claude-test","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#.utf8)
    )

    func makeEngine(_ upstream: FakeUpstream, configure: (inout EngineConfiguration) -> Void = { _ in }) -> StreamEngine {
        var configuration = EngineConfiguration()
        configuration.retry = RetryPolicy(maxRetries: 3, baseDelay: .milliseconds(1), maxDelay: .milliseconds(2))
        configure(&configuration)
        return StreamEngine(configuration: configuration, upstream: upstream, logger: Logger(label: "test"))
    }

    /// A drain or the sweeper can cancel a registered stream before its job is attached: the job is cancelled
    /// when it arrives, and the first reason is the one kept.
    @Test func aCancelBeforeTheJobIsAttachedCancelsTheJob() async {
        let record = StreamEngine.StreamRecord(
            channel: StreamChannel(streamID: "st_test", maxBufferedBytes: 1 << 20), owner: "",
            trace: StreamTrace(traceparent: nil, tracestate: nil), route: .rpc)
        record.cancel(RPCError(.unavailable, "the server is draining"))
        record.cancel(RPCError(.cancelled, "a second reason"))
        let job = Task<Void, Never> { try? await Task.sleep(for: .seconds(600)) }
        record.attach(job)
        #expect(job.isCancelled)
        #expect(record.cancelReason?.code == .unavailable)
        await job.value
    }

    @Test func aCancelAfterTheJobIsAttachedCancelsTheJob() async {
        let record = StreamEngine.StreamRecord(
            channel: StreamChannel(streamID: "st_test", maxBufferedBytes: 1 << 20), owner: "",
            trace: StreamTrace(traceparent: nil, tracestate: nil), route: .rpc)
        let job = Task<Void, Never> { try? await Task.sleep(for: .seconds(600)) }
        record.attach(job)
        #expect(!job.isCancelled)
        record.cancel(RPCError(.cancelled, "the client cancelled"))
        #expect(job.isCancelled)
        await job.value
    }

    /// Every event of the stream from `after`, and how it ended.
    func collect(_ channel: StreamChannel, after: Int = 0) async throws -> (events: [JSONValue], end: RPCError?) {
        let generation = channel.attach()
        defer { channel.detach(generation) }
        var events: [JSONValue] = []
        var cursor = after
        while let item = try await channel.next(after: cursor, generation: generation) {
            switch item {
            case .event(let seq, _, let bytes, _):
                events.append(try JSONValue(parsing: bytes))
                cursor = seq
            case .end(let error):
                return (events, error)
            }
        }
        Issue.record("the subscription ended without the stream ending")
        return (events, nil)
    }

    func text(_ events: [JSONValue]) -> String {
        events.filter { $0["type"] == "message_delta" }.compactMap { $0["delta"]?.stringValue }.joined()
    }

    func types(_ events: [JSONValue]) -> [String] { events.compactMap { $0["type"]?.stringValue } }

    @Test func aCleanStreamNumbersEveryEventFromOne() async throws {
        let engine = makeEngine(FakeUpstream([FakeUpstream.message(["Hello", " world"])]))
        let channel = try engine.start(Self.request, caller: "a", deadline: nil)
        let (events, end) = try await collect(channel)
        #expect(end == nil)
        #expect(types(events) == ["message_start", "message_delta", "message_delta", "message_stop", "stream_complete"])
        #expect(events.map { $0["seq"]?.intValue } == Array(1...5))
        #expect(events.allSatisfy { $0["stream_id"]?.stringValue == channel.streamID })
        #expect(text(events) == "Hello world")
        #expect(events.last?["usage"] == ["input_tokens": 10, "output_tokens": 2])
    }

    /// The job, including the part bounded by its deadline, consumes the upstream on the executor it was given
    /// (the client's event loop in the server): not on the global pool, which would cost a thread switch per event.
    @Test func theJobConsumesTheUpstreamOnItsExecutor() async throws {
        let executor = QueueExecutor()
        let onExecutor = LockedValue<[Bool]>([])
        let probe: FakeUpstream.Step = .observe { onExecutor.withLock { $0.append(executor.isCurrent) } }
        var script = FakeUpstream.message(["Hello", " world"])
        script.insert(probe, at: 0)
        script.insert(probe, at: 4)
        let engine = makeEngine(FakeUpstream([script]))
        let (events, end) = try await collect(
            try engine.start(Self.request, caller: "a", deadline: .now + .seconds(60), executor: executor))
        #expect(end == nil)
        #expect(text(events) == "Hello world")
        #expect(onExecutor.withLock { $0 } == [true, true])
    }

    /// Finished streams stay resumable for `retention`, then the sweep forgets them (oldest first).
    @Test func finishedStreamsAreForgottenAfterTheRetention() async throws {
        let engine = makeEngine(FakeUpstream([FakeUpstream.message(["a"]), FakeUpstream.message(["b"])])) {
            $0.retention = .milliseconds(100)
        }
        let first = try engine.start(Self.request, caller: "a", deadline: nil)
        _ = try await collect(first)
        let second = try engine.start(Self.request, caller: "a", deadline: nil)
        _ = try await collect(second)
        #expect(try engine.channel(first.streamID, caller: "a") === first, "resumable right after it finished")
        // The sweep runs every 250 ms; give it a few rounds.
        let giveUp = ContinuousClock.now + .seconds(5)
        while engine.streamCount > 0, ContinuousClock.now < giveUp { try await Task.sleep(for: .milliseconds(50)) }
        #expect(engine.streamCount == 0)
        #expect(throws: RPCError.self) { try engine.channel(second.streamID, caller: "a") }
    }

    @Test func aFailureBeforeAnyTextIsRetriedTransparently() async throws {
        let upstream = FakeUpstream([
            [.fail(UpstreamFailure(.connectionReset, message: "reset"))],
            FakeUpstream.message(["Hello"]),
        ])
        let (events, end) = try await collect(try makeEngine(upstream).start(Self.request, caller: "a", deadline: nil))
        #expect(end == nil)
        #expect(Array(types(events).prefix(2)) == ["message_start", "upstream_retry"], "message_start first, then the retry as it happens")
        #expect(events[1]["mode"] == "transparent")
        #expect(text(events) == "Hello")
    }

    @Test func partialTextIsContinuedWithPrefillWithoutRepeats() async throws {
        let upstream = FakeUpstream([
            Array(FakeUpstream.message(["Hello", " wor"]).prefix(4)) + [.fail(UpstreamFailure(.streamEndedEarly, message: "cut"))],
            FakeUpstream.message(["ld!"], id: "msg_2"),
        ])
        let (events, end) = try await collect(try makeEngine(upstream).start(Self.request, caller: "a", deadline: nil))
        #expect(end == nil)
        #expect(text(events) == "Hello world!")
        #expect(events.first { $0["type"] == "upstream_retry" }?["mode"] == "continue")
        #expect(types(events).filter { $0 == "message_start" }.count == 1, "the continuation does not start a second message")
        #expect(Set(events.compactMap { $0["id"]?.stringValue }).count == 1, "one message id across both attempts")
        let retryBody = try JSONValue(parsing: upstream.requests.withLock { $0[1] })
        #expect(retryBody["messages"]?.arrayValue?.last == ["role": "assistant", "content": "Hello wor"])
    }

    @Test func trailingWhitespaceIsTrimmedFromPrefillAndNotRepeated() async throws {
        let upstream = FakeUpstream([
            Array(FakeUpstream.message(["Hello "]).prefix(3)) + [.fail(UpstreamFailure(.connectionReset, message: "cut"))],
            FakeUpstream.message([" world"]),
        ])
        let (events, _) = try await collect(try makeEngine(upstream).start(Self.request, caller: "a", deadline: nil))
        #expect(text(events) == "Hello world")
        let retryBody = try JSONValue(parsing: upstream.requests.withLock { $0[1] })
        #expect(retryBody["messages"]?.arrayValue?.last?["content"] == "Hello")
    }

    @Test func aToolUseBlockForcesARestart() async throws {
        var first = Array(FakeUpstream.message(["Let me look"]).prefix(3))
        first += [
            .event(.contentBlockStart(index: 1, block: .toolUse(id: "toolu_1", name: "read_file"))),
            .fail(UpstreamFailure(.connectionReset, message: "cut")),
        ]
        let upstream = FakeUpstream([first, FakeUpstream.message(["Fresh answer"])])
        let (events, end) = try await collect(try makeEngine(upstream).start(Self.request, caller: "a", deadline: nil))
        #expect(end == nil)
        let kinds = types(events)
        let restart = try #require(kinds.firstIndex(of: "message_restart"))
        #expect(events.first { $0["type"] == "upstream_retry" }?["mode"] == "restart")
        #expect(text(Array(events[restart...])) == "Fresh answer", "after message_restart the message starts over")
    }

    @Test func retryableFailuresEndCleanlyAfterTheBudget() async throws {
        let overloaded = UpstreamFailure.http(
            status: 529, body: Array(#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#.utf8),
            headers: [("request-id", "req_9")])
        let upstream = FakeUpstream(Array(repeating: [.fail(overloaded)], count: 4))
        let (events, end) = try await collect(try makeEngine(upstream).start(Self.request, caller: "a", deadline: nil))
        #expect(types(events) == ["message_start", "upstream_retry", "upstream_retry", "upstream_retry", "stream_error"])
        #expect(end?.code == .unavailable)
        #expect(end?.message.contains("after 4 attempts") == true)
        #expect(end?.message.contains("req_9") == true)
        #expect(events.last?["details"]?["code"] == "UNAVAILABLE")
    }

    @Test func finalFailuresAreNotRetried() async throws {
        let invalid = UpstreamFailure.http(
            status: 400, body: Array(#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#.utf8), headers: [])
        let (events, end) = try await collect(
            try makeEngine(FakeUpstream([[.fail(invalid)]])).start(Self.request, caller: "a", deadline: nil))
        #expect(types(events) == ["message_start", "stream_error"])
        #expect(end?.code == .invalidArgument)
    }

    @Test func admissionQueuesThenRejectsAtOnce() async throws {
        let upstream = FakeUpstream([[.hang], FakeUpstream.message(["second"])])
        let engine = makeEngine(upstream) { $0.limits = Admission.Limits(maxActive: 1, maxQueued: 1) }
        let first = try engine.start(Self.request, caller: "a", deadline: nil)
        let second = try engine.start(Self.request, caller: "a", deadline: nil)
        #expect(throws: RPCError.self) { try engine.start(Self.request, caller: "a", deadline: nil) }
        try engine.cancel(first.streamID, caller: "a", reason: "test cancels")
        let (firstEvents, firstEnd) = try await collect(first)
        #expect(firstEnd?.code == .cancelled)
        #expect(types(firstEvents).last == "stream_error")
        let (events, end) = try await collect(second)
        #expect(end == nil)
        #expect(events.first?["type"] == "stream_queued")
        #expect(events.first?["position"] == 1)
        #expect(text(events) == "second")
    }

    @Test func aDeadlineEndsAHangingStream() async throws {
        let engine = makeEngine(FakeUpstream([[.hang]]))
        let channel = try engine.start(Self.request, caller: "a", deadline: .now + .milliseconds(50))
        let (events, end) = try await collect(channel)
        #expect(end?.code == .deadlineExceeded)
        #expect(types(events) == ["message_start", "stream_error"])
        #expect(engine.scheduler.active == 0, "the slot is freed")
    }

    @Test func resumeReplaysAfterASeqAndOnlyForTheOwner() async throws {
        let engine = makeEngine(FakeUpstream([FakeUpstream.message(["a", "b", "c"])]))
        let channel = try engine.start(Self.request, caller: "owner", deadline: nil)
        let (all, _) = try await collect(channel)
        let resumed = try engine.channel(channel.streamID, caller: "owner")
        let (tail, end) = try await collect(resumed, after: 2)
        #expect(end == nil)
        #expect(tail == Array(all.dropFirst(2)))
        #expect(throws: RPCError.self) { try engine.channel(channel.streamID, caller: "intruder") }
        #expect(throws: RPCError.self) { try engine.cancel(channel.streamID, caller: "intruder", reason: "no") }
    }

    @Test func simulationIsRefusedAgainstTheRealAPI() throws {
        let engine = makeEngine(FakeUpstream([])) { $0.upstreamIsSimulator = false }
        let request = try SendMessageRequest(
            json: Array(#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"simulation":{"seed":1}}"#.utf8)
        )
        #expect(
            throws: RPCError(
                .invalidArgument,
                "'simulation' is only accepted when Sluice runs on its simulator; this server talks to the real Anthropic API")
        ) {
            try engine.start(request, caller: "a", deadline: nil)
        }
    }

    @Test(arguments: [
        #"{"max_tokens":1,"messages":[{"role":"user","content":"x"}]}"#,
        #"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}"#,
        #"{"model":"m","max_tokens":1,"messages":[]}"#,
        #"{"model":"m","max_tokens":1,"messages":[{"role":"robot","content":"x"}]}"#,
        #"{"model":"m""#,
    ])
    func invalidRequestsAreRejected(json: String) {
        #expect(throws: RPCError.self) { try SendMessageRequest(json: Array(json.utf8)) }
    }
}

/// Runs jobs on one serial dispatch queue and can tell whether the caller is on it.
final class QueueExecutor: TaskExecutor {
    private let queue = DispatchQueue(label: "sluice.test.executor")
    private let key = DispatchSpecificKey<Bool>()

    init() {
        queue.setSpecific(key: key, value: true)
    }

    var isCurrent: Bool { DispatchQueue.getSpecific(key: key) == true }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
