import SluiceWire
import Testing

@testable import SluiceClient

@Suite struct ResumeStateMachineTests {
    /// No jitter, so the waits are exact; `theWaitIsShortenedByTheJitter` covers it.
    private let policy = SluiceResumePolicy(
        maxAttempts: 3, initialBackoff: .milliseconds(100), maxBackoff: .milliseconds(250), jitter: 0)
    private let lost = RPCClientStatus(code: .unavailable, message: "the connection was lost")
    private let streamID = "st_0123456789abcdef"

    /// A machine that has delivered seqs 1...count of `streamID`.
    private func delivered(_ count: Int, deadline: ContinuousClock.Instant? = nil) -> ResumeStateMachine {
        var machine = ResumeStateMachine(policy: policy, deadline: deadline)
        for seq in 1...count {
            #expect(machine.received(seq: seq, streamID: streamID, isLast: false) == .deliver)
        }
        return machine
    }

    @Test(arguments: [(0.0, 400), (0.5, 300), (0.75, 250)])
    func theWaitIsShortenedByTheJitter(fraction: Double, milliseconds: Int) {
        let jittered = SluiceResumePolicy(initialBackoff: .milliseconds(400), jitter: 0.5)
        var machine = ResumeStateMachine(policy: jittered, randomFraction: { fraction })
        #expect(machine.received(seq: 1, streamID: streamID, isLast: false) == .deliver)
        #expect(machine.callEnded(lost) == .resume(after: .milliseconds(milliseconds)))
    }

    @Test func deliversSeqsInOrderAndEndsWithTheCallsStatus() {
        var machine = delivered(3)
        #expect(machine.streamID == streamID)
        #expect(machine.lastSeq == 3)
        #expect(machine.received(seq: 4, streamID: streamID, isLast: true) == .deliver)
        #expect(machine.callEnded(.init(code: .ok, message: "")) == .finish(.init(code: .ok, message: "")))
        #expect(machine.state == .finished(.init(code: .ok, message: "")))
    }

    @Test func aDroppedCallResumesAfterTheLastSeqWithGrowingBoundedBackoff() {
        var machine = delivered(5)
        #expect(machine.callEnded(lost) == .resume(after: .milliseconds(100)))
        #expect(machine.state == .backingOff)
        #expect(machine.backoffElapsed(now: .now) == .startResume(streamID: streamID, afterSeq: 5, timeout: nil))
        #expect(machine.callEnded(lost) == .resume(after: .milliseconds(200)))
        #expect(machine.backoffElapsed(now: .now) == .startResume(streamID: streamID, afterSeq: 5, timeout: nil))
        #expect(machine.callEnded(lost) == .resume(after: .milliseconds(250)), "capped at maxBackoff")
        #expect(machine.backoffElapsed(now: .now) == .startResume(streamID: streamID, afterSeq: 5, timeout: nil))
        #expect(machine.resumes == 3)
        // The fourth failure in a row exceeds maxAttempts.
        guard case .finish(let status) = machine.callEnded(lost) else {
            Issue.record("expected the machine to give up")
            return
        }
        #expect(status.code == .unavailable)
        #expect(status.message.contains("gave up after 3 resume attempts"))
        #expect(status.message.contains("resume \(streamID) after seq 5"))
    }

    @Test func anEventAfterAResumeStartsTheAttemptCountAgain() {
        var machine = delivered(2)
        for _ in 0..<3 {
            #expect(machine.callEnded(lost) == .resume(after: .milliseconds(100)))
            #expect(machine.backoffElapsed(now: .now) == .startResume(streamID: streamID, afterSeq: machine.lastSeq, timeout: nil))
            #expect(machine.received(seq: machine.lastSeq + 1, streamID: streamID, isLast: false) == .deliver)
        }
        #expect(machine.lastSeq == 5)
        #expect(machine.resumes == 3)
    }

    @Test func neverDeliversASeqTwiceNorSkipsOne() {
        var machine = delivered(4)
        #expect(machine.received(seq: 3, streamID: streamID, isLast: false) == .dropDuplicate)
        #expect(machine.received(seq: 4, streamID: streamID, isLast: false) == .dropDuplicate)
        #expect(machine.lastSeq == 4)
        guard case .fail(let status) = machine.received(seq: 7, streamID: streamID, isLast: false) else {
            Issue.record("a gap must end the stream")
            return
        }
        #expect(status.code == .dataLoss)
        #expect(status.message.contains("events 5–6"))
        // The call's own end (it is cancelled) no longer changes the outcome.
        #expect(machine.callEnded(.init(code: .cancelled, message: "")) == .none)
        #expect(machine.state == .finished(status))
    }

    @Test func anEventOfAnotherStreamEndsTheStream() {
        var machine = delivered(1)
        guard case .fail(let status) = machine.received(seq: 2, streamID: "st_ffffffffffffffff", isLast: false) else {
            Issue.record("expected a failure")
            return
        }
        #expect(status.code == .internal)
    }

    @Test func failuresThatAreNotATransportDropAreFinal() {
        var machine = delivered(2)
        let exhausted = RPCClientStatus(code: .resourceExhausted, message: "full")
        #expect(machine.callEnded(exhausted) == .finish(exhausted))

        // UNAVAILABLE after the last event (stream_error UNAVAILABLE) is the stream's own outcome.
        var ended = delivered(2)
        #expect(ended.received(seq: 3, streamID: streamID, isLast: true) == .deliver)
        #expect(ended.callEnded(lost) == .finish(lost))
    }

    @Test func aDropBeforeTheFirstEventCannotResume() {
        var machine = ResumeStateMachine(policy: policy)
        #expect(machine.callEnded(lost) == .finish(lost), "no stream id yet: nothing to resume")
    }

    @Test func aStreamTheServerCanNoLongerReplayEndsWithAClearError() {
        var machine = delivered(8)
        #expect(machine.callEnded(lost) == .resume(after: .milliseconds(100)))
        _ = machine.backoffElapsed(now: .now)
        let evicted = RPCClientStatus(code: .dataLoss, message: "events 9–20 are no longer buffered")
        guard case .finish(let status) = machine.callEnded(evicted) else {
            Issue.record("expected the machine to give up")
            return
        }
        #expect(status.code == .dataLoss)
        #expect(status.message == "stream \(streamID) cannot be resumed after seq 8: events 9–20 are no longer buffered")
    }

    @Test func resumeStartsFromTheGivenSeq() {
        var machine = ResumeStateMachine(policy: policy, streamID: streamID, afterSeq: 10)
        #expect(machine.received(seq: 10, streamID: streamID, isLast: false) == .dropDuplicate)
        #expect(machine.received(seq: 11, streamID: streamID, isLast: false) == .deliver)
        // Known stream id: a drop before any event resumes too.
        var fresh = ResumeStateMachine(policy: policy, streamID: streamID, afterSeq: 10)
        #expect(fresh.callEnded(lost) == .resume(after: .milliseconds(100)))
        #expect(fresh.backoffElapsed(now: .now) == .startResume(streamID: streamID, afterSeq: 10, timeout: nil))
    }

    @Test func resumesShareTheStreamsDeadline() {
        let start = ContinuousClock.now
        var machine = delivered(1, deadline: start + .seconds(5))
        #expect(machine.callEnded(lost) == .resume(after: .milliseconds(100)))
        #expect(machine.backoffElapsed(now: start + .seconds(2)) == .startResume(streamID: streamID, afterSeq: 1, timeout: .seconds(3)))
        #expect(machine.callEnded(lost) == .resume(after: .milliseconds(200)))
        guard case .finish(let status) = machine.backoffElapsed(now: start + .seconds(5)) else {
            Issue.record("expected the deadline to end the stream")
            return
        }
        #expect(status.code == .deadlineExceeded)
    }

    @Test func cancelEndsTheCallOrTheBackoffAndIsNeverResumed() {
        var calling = delivered(1)
        #expect(calling.cancel() == .cancelCall)
        #expect(calling.cancelPending)
        #expect(calling.cancel() == .none)
        let cancelled = RPCClientStatus(code: .cancelled, message: "cancelled")
        #expect(calling.callEnded(cancelled) == .finish(cancelled))

        // A cancel during a drop's UNAVAILABLE (the reset raced the loss) must not resume either.
        var racing = delivered(1)
        #expect(racing.cancel() == .cancelCall)
        #expect(racing.callEnded(lost) == .finish(lost))

        var waiting = delivered(1)
        #expect(waiting.callEnded(lost) == .resume(after: .milliseconds(100)))
        guard case .finish(let status) = waiting.cancel() else {
            Issue.record("cancel while backing off ends the stream at once")
            return
        }
        #expect(status.code == .cancelled)
        #expect(waiting.backoffElapsed(now: .now) == .none)
    }

    @Test func zeroAttemptsTurnsResumeOff() {
        var machine = ResumeStateMachine(policy: SluiceResumePolicy(maxAttempts: 0))
        #expect(machine.received(seq: 1, streamID: streamID, isLast: false) == .deliver)
        guard case .finish(let status) = machine.callEnded(lost) else {
            Issue.record("expected no resume")
            return
        }
        #expect(status.message.contains("automatic resume is off"))
    }
}

@Suite struct SluiceEventTests {
    @Test func decodesEachSchemaTypeAndKeepsTheBytes() throws {
        let bytes = Array(#"{"delta":"Hi","id":"msg_1","seq":2,"stream_id":"st_1","type":"message_delta"}"#.utf8)
        let delta = try SluiceEvent(json: bytes)
        #expect(delta.seq == 2 && delta.streamID == "st_1")
        #expect(delta.kind == .messageDelta(id: "msg_1", delta: "Hi"))
        #expect(delta.json == bytes)
        #expect(!delta.isLast)

        let error = try SluiceEvent(
            json: Array(
                #"{"details":{"code":"DEADLINE_EXCEEDED"},"error":"too slow","seq":9,"stream_id":"st_1","type":"stream_error"}"#.utf8
            ))
        guard case .streamError(let message, let code, _) = error.kind else {
            Issue.record("expected stream_error")
            return
        }
        #expect(message == "too slow" && code == .deadlineExceeded && error.isLast)

        let complete = try SluiceEvent(
            json: Array(
                #"{"seq":3,"stream_id":"st_1","type":"stream_complete","usage":{"input_tokens":5,"output_tokens":7}}"#.utf8
            ))
        #expect(complete.kind == .streamComplete(inputTokens: 5, outputTokens: 7))
        #expect(complete.isLast)

        let stop = try SluiceEvent(json: Array(#"{"id":"m","seq":4,"stop_reason":null,"stream_id":"st_1","type":"message_stop"}"#.utf8))
        #expect(stop.kind == .messageStop(id: "m", stopReason: nil))
    }

    /// A server that shuts down hands the stream off: the marker is not the end, and the UNAVAILABLE that follows
    /// is resumed after it (any replica continues the stream).
    @Test func aHandOffIsNotTheEndAndItsUnavailableIsResumedAfterIt() throws {
        let handOff = try SluiceEvent(json: Array(#"{"reason":"shutdown","seq":7,"stream_id":"st_1","type":"stream_handoff"}"#.utf8))
        #expect(handOff.kind == .streamHandoff(reason: "shutdown"))
        #expect(handOff.type == "stream_handoff" && !handOff.isLast)
        var machine = ResumeStateMachine(policy: SluiceResumePolicy(jitter: 0))
        for seq in 1...7 {
            #expect(machine.received(seq: seq, streamID: "st_1", isLast: seq == 7 && handOff.isLast) == .deliver)
        }
        let handedOff = RPCClientStatus(code: .unavailable, message: "this server is shutting down and handed the stream off")
        #expect(machine.callEnded(handedOff) == .resume(after: .milliseconds(100)))
        #expect(machine.backoffElapsed(now: .now) == .startResume(streamID: "st_1", afterSeq: 7, timeout: nil))
    }

    @Test func anUnknownTypeIsKeptWholeForForwardCompatibility() throws {
        let event = try SluiceEvent(json: Array(#"{"seq":1,"stream_id":"st_1","type":"hologram_delta","text":"hm"}"#.utf8))
        #expect(event.type == "hologram_delta")
        guard case .other(let type, let fields) = event.kind else {
            Issue.record("expected .other")
            return
        }
        #expect(type == "hologram_delta" && fields["text"] == "hm")
    }

    @Test func claudeFeatureEventsAreTyped() throws {
        let thinking = try SluiceEvent(json: Array(#"{"seq":1,"stream_id":"st_1","type":"thinking_delta","id":"m","delta":"hm"}"#.utf8))
        #expect(thinking.kind == .thinkingDelta(id: "m", delta: "hm"))
        let call = try SluiceEvent(
            json: Array(
                #"{"seq":2,"stream_id":"st_1","type":"tool_call","id":"m","tool_use_id":"toolu_1","name":"f","input":{"n":9007199254740993}}"#
                    .utf8))
        #expect(call.kind == .toolCall(id: "m", toolUseID: "toolu_1", name: "f", input: ["n": 9_007_199_254_740_993]))
        let citation = try SluiceEvent(
            json: Array(#"{"seq":3,"stream_id":"st_1","type":"citation","id":"m","citation":{"cited_text":"x"}}"#.utf8))
        #expect(citation.kind == .citation(id: "m", citation: ["cited_text": "x"]))
        #expect(throws: RPCError(.internal, "the tool_call event (seq 4) lacks 'tool_use_id' (a string)")) {
            try SluiceEvent(json: Array(#"{"seq":4,"stream_id":"st_1","type":"tool_call","id":"m","name":"f","input":{}}"#.utf8))
        }
    }

    @Test func aFrameMissingARequiredMemberNamesIt() {
        #expect(throws: RPCError(.internal, "the message_delta event (seq 2) lacks 'delta' (a string)")) {
            try SluiceEvent(json: Array(#"{"id":"m","seq":2,"stream_id":"st_1","type":"message_delta"}"#.utf8))
        }
        #expect(throws: RPCError.self) { try SluiceEvent(json: Array("not json".utf8)) }
    }

    @Test func theRequestSerializesTheSchemasMembers() {
        var request = SluiceMessageRequest(model: "claude-sonnet-4-5", maxTokens: 64, prompt: "hello")
        request.tools = ["read_file"]
        request.simulation = ["output_tokens": 3]
        #expect(
            request.json == [
                "model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [["role": "user", "content": "hello"]],
                "tools": ["read_file"], "simulation": ["output_tokens": 3],
            ])
    }
}
