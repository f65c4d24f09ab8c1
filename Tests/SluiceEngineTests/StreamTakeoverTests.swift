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

    func stop(_ id: String, _ reason: String) -> JSONValue { ["type": "message_stop", "id": .string(id), "stop_reason": .string(reason)] }
    func toolStart(_ id: String) -> JSONValue {
        ["type": "tool_start", "id": .string(id), "name": "read_file", "input": ["path": .string(id)]]
    }
    func toolUse(_ id: String) -> JSONValue {
        ["type": "tool_use", "id": .string(id), "name": "read_file", "input": ["path": .string(id)]]
    }

    @Test func aFinishedToolRoundIsRebuiltAsTheTurnsThatFollowTheRequest() {
        let output: JSONValue = ["text": "contents"]
        let takeover = StreamTakeover(
            events: events([
                start, delta("Let me look."), stop("msg_1", "tool_use"), toolStart("t1"), toolStart("t2"),
                ["type": "tool_progress", "id": "t1", "message": "reading"], ["type": "tool_complete", "id": "t1", "output": output],
                ["type": "tool_error", "id": "t2", "error": "no such file"], ["type": "message_start", "id": "msg_2"],
                ["type": "message_delta", "id": "msg_2", "delta": "It says"],
            ]))
        #expect(takeover.finishedTurns == 1)
        #expect(
            takeover.conversation == [
                ["role": "assistant", "content": [["type": "text", "text": "Let me look."], toolUse("t1"), toolUse("t2")]],
                [
                    "role": "user",
                    "content": [
                        ["type": "tool_result", "tool_use_id": "t1", "content": .string(output.serializedString)],
                        ["type": "tool_result", "tool_use_id": "t2", "content": "no such file", "is_error": true],
                    ],
                ],
            ])
        #expect(takeover.next == .continueTurn(messageID: "msg_2", sentText: "It says", sawNonTextBlock: false))
    }

    @Test func aRoundsThinkingGoesFirstWithItsSignature() {
        let takeover = StreamTakeover(
            events: events([
                start, ["type": "thinking_delta", "id": "msg_1", "delta": "Hmm"], ["type": "thinking_delta", "id": "msg_1", "delta": "."],
                ["type": "thinking_signature", "id": "msg_1", "signature": "sig"], delta("Reading."), stop("msg_1", "tool_use"),
                toolStart("t1"), ["type": "tool_complete", "id": "t1", "output": "ok"], ["type": "message_start", "id": "msg_2"],
            ]))
        #expect(
            Array(takeover.conversation.prefix(1)) == [
                [
                    "role": "assistant",
                    "content": [
                        ["type": "thinking", "thinking": "Hmm.", "signature": "sig"], ["type": "text", "text": "Reading."], toolUse("t1"),
                    ],
                ]
            ])
        #expect(takeover.next == .continueTurn(messageID: "msg_2", sentText: "", sawNonTextBlock: false))
    }

    /// A tool not yet started has logged nothing: the round is not known whole, so the turn that asked for it restarts.
    @Test func aRoundTheOwnerDiedInRestartsTheTurnThatAskedForIt() {
        for cut in 3...5 {
            let logged: [JSONValue] = [
                start, delta("Let me look."), stop("msg_1", "tool_use"), toolStart("t1"),
                ["type": "tool_progress", "id": "t1", "message": "50%"],
            ]
            let takeover = StreamTakeover(events: events(Array(logged.prefix(cut))))
            #expect(takeover.conversation.isEmpty && takeover.finishedTurns == 0)
            #expect(takeover.next == .continueTurn(messageID: "msg_1", sentText: "Let me look.", sawNonTextBlock: true))
        }
    }

    @Test func aTurnAfterARoundWithoutItsResultsIsNotContinued() {
        let takeover = StreamTakeover(
            events: events([start, stop("msg_1", "tool_use"), toolStart("t1"), ["type": "message_start", "id": "msg_2"]]))
        guard case .unsupported = takeover.next else {
            Issue.record("a log missing a tool result was continued: \(takeover.next)")
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

    /// A takeover runs at once or not at all: at capacity the replica leaves the stream to another (nothing queued),
    /// and a taken-over stream's slot counts like any other until it is released.
    @Test func aReplicaAtCapacityGetsNoSlotForATakeoverAndQueuesNothing() throws {
        let scheduler = Scheduler(limits: .init(maxActive: 2, maxQueued: 4, maxActivePerKey: 1), queueTimeout: .seconds(1))
        let first = try #require(scheduler.admitNow(key: "key-1"))
        #expect(scheduler.admitNow(key: "key-1") == nil, "the caller's local limit holds for a takeover too")
        let second = try #require(scheduler.admitNow(key: "key-2"))
        #expect(scheduler.admitNow(key: "key-3") == nil)
        #expect(scheduler.active == 2 && scheduler.queued == 0)
        first.release()
        second.release()
        #expect(scheduler.active == 0)
        #expect(scheduler.admitNow(key: "key-3") != nil)
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
