import SluiceStore
import SluiceWire
import Testing

@testable import SluiceEngine

@Suite struct StreamTakeoverTests {
    func events(_ frames: [JSONValue]) -> [(seq: Int, frame: JSONValue)] {
        frames.enumerated().map { ($0.offset + 1, $0.element) }
    }

    let start: JSONValue = ["type": "message_start", "id": "msg_1"]
    func delta(_ text: String) -> JSONValue { ["type": "message_delta", "id": "msg_1", "delta": .string(text)] }

    @Test func aMessageUnderWayContinuesWithItsTextAndSeq() {
        let takeover = StreamTakeover(events: events([["type": "stream_queued"], start, delta("Hello, "), delta("world")]))
        #expect(takeover.lastSeq == 4)
        #expect(takeover.next == .continueTurn(messageID: "msg_1", sentText: "Hello, world", sawNonTextBlock: false))
    }

    @Test func retriesAndRestartsOfTheLostReplicaAreCounted() {
        let takeover = StreamTakeover(
            events: events([
                start, delta("old"), ["type": "upstream_retry"], ["type": "message_restart", "id": "msg_1"], delta("new"),
            ]))
        #expect(takeover.retries == 1)
        #expect(takeover.next == .continueTurn(messageID: "msg_1", sentText: "new", sawNonTextBlock: false))
    }

    @Test func nothingStartedStartsTheTurnAndAStoppedMessageOnlyCompletes() {
        #expect(StreamTakeover(events: events([["type": "stream_queued"]])).next == .startTurn)
        #expect(StreamTakeover(events: []).next == .startTurn)
        let stopped = StreamTakeover(events: events([start, delta("done"), ["type": "message_stop", "stop_reason": "end_turn"]]))
        #expect(stopped.next == .complete)
        #expect(StreamTakeover(events: events([start, ["type": "stream_complete"]])).next == .ended(status: "OK", message: nil))
        let failed = StreamTakeover(events: events([start, ["type": "stream_error", "error": "boom", "details": ["code": "INTERNAL"]]]))
        #expect(failed.next == .ended(status: "INTERNAL", message: "boom"))
    }

    @Test(arguments: ["thinking_delta", "thinking_signature", "redacted_thinking", "tool_call_delta", "content_block"])
    func aNonTextBlockMakesTheRetryARestart(type: String) {
        let takeover = StreamTakeover(events: events([start, delta("Hi"), ["type": .string(type), "id": "msg_1"]]))
        #expect(takeover.next == .continueTurn(messageID: "msg_1", sentText: "Hi", sawNonTextBlock: true))
    }

    /// A client tool call ends the stream at message_stop: the caller runs it, so there is nothing to continue.
    @Test func aTurnThatCalledAClientToolOnlyCompletes() {
        let takeover = StreamTakeover(
            events: events([
                start, ["type": "tool_call", "id": "msg_1", "tool_use_id": "toolu_1", "name": "get_weather", "input": [:]],
                ["type": "message_stop", "id": "msg_1", "stop_reason": "tool_use"],
            ]))
        #expect(takeover.next == .complete)
    }

    @Test func aToolRoundIsNotContinued() {
        let tool = StreamTakeover(
            events: events([start, ["type": "message_stop", "stop_reason": "tool_use"], ["type": "tool_start", "id": "t"]]))
        guard case .unsupported = tool.next else {
            Issue.record("a tool round was continued: \(tool.next)")
            return
        }
        let later = StreamTakeover(events: events([start, ["type": "tool_complete", "id": "t"], start, delta("x")]))
        guard case .unsupported = later.next else {
            Issue.record("a turn after a tool round was continued: \(later.next)")
            return
        }
    }

    @Test func claimsOnlyARunningWholeStreamWhoseLeaseLapsedWithRoom() {
        let lapsed = StoredStreamMetadata(owner: "a", caller: "k", status: "running", message: nil, lastSeq: nil, resumable: true)
        #expect(StreamTakeover.shouldClaim(lapsed, hasCapacity: true))
        #expect(!StreamTakeover.shouldClaim(lapsed, hasCapacity: false))
        var held = lapsed
        held.leaseHolder = "a"
        #expect(!StreamTakeover.shouldClaim(held, hasCapacity: true))
        var ended = lapsed
        ended.status = "OK"
        #expect(!StreamTakeover.shouldClaim(ended, hasCapacity: true))
        var gappy = lapsed
        gappy.resumable = false
        #expect(!StreamTakeover.shouldClaim(gappy, hasCapacity: true))
    }
}

@Suite struct StreamTakeoverReasonTests {
    let start: JSONValue = ["type": "message_start", "id": "msg_1"]
    let delta: JSONValue = ["type": "message_delta", "id": "msg_1", "delta": "Hi"]
    let handOff: JSONValue = ["type": "stream_handoff", "reason": "shutdown"]

    func events(_ frames: [JSONValue]) -> [(seq: Int, frame: JSONValue)] {
        frames.enumerated().map { ($0.offset + 1, $0.element) }
    }

    /// A log that ends with the owner's stream_handoff was let go of, not lost: the continuation says so.
    @Test func aLogEndingWithAHandOffContinuesForReasonHandoff() {
        let takeover = StreamTakeover(events: events([start, delta, handOff]))
        #expect(takeover.reason == "handoff")
        #expect(takeover.lastSeq == 3)
        #expect(takeover.next == .continueTurn(messageID: "msg_1", sentText: "Hi", sawNonTextBlock: false))
    }

    /// Handed off, continued, then its new owner died: that owner was lost.
    @Test func eventsAfterTheHandOffMakeItReplicaLostAgain() {
        let takeover = StreamTakeover(
            events: events([start, delta, handOff, ["type": "upstream_retry", "reason": "handoff"], delta]))
        #expect(takeover.reason == "replica_lost")
        #expect(takeover.retries == 1)
        #expect(StreamTakeover(events: events([start, delta])).reason == "replica_lost")
    }
}
