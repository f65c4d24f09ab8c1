import SluiceWire
import Testing

@testable import SluiceEngine

@Suite struct HandOffPlanTests {
    /// Encoded frames with seqs from `first`.
    func frames(_ values: [JSONValue], first: Int = 1) -> [(seq: Int, frame: [UInt8])] {
        values.enumerated().map { (first + $0.offset, $0.element.serialized()) }
    }

    let start: JSONValue = ["type": "message_start", "id": "msg_1"]
    let delta: JSONValue = ["type": "message_delta", "id": "msg_1", "delta": "Hi"]

    @Test func aStreamAnotherReplicaCanContinueIsHandedOff() {
        for events in [[], [["type": "stream_queued", "position": 1]], [start], [start, delta]] as [[JSONValue]] {
            #expect(HandOffPlan.verdict(clientCanResume: true, events: frames(events), storeCanHandOff: true) == .handOff)
        }
    }

    @Test func aClientThatCannotResumeKeepsItsStreamHere() {
        let verdict = HandOffPlan.verdict(clientCanResume: false, events: frames([start, delta]), storeCanHandOff: true)
        #expect(verdict == .keep("its client cannot resume it on another replica (/v1/messages)"))
    }

    @Test func aStoreThatCannotTakeItKeepsItHere() {
        let verdict = HandOffPlan.verdict(clientCanResume: true, events: frames([start, delta]), storeCanHandOff: false)
        guard case .keep(let why) = verdict else {
            Issue.record("expected keep, got \(verdict)")
            return
        }
        #expect(why.contains("shared store"))
    }

    /// Without its first events nobody could rebuild it (the log is trimmed like the replay buffer).
    @Test func aStreamWhoseFirstEventsWereEvictedIsKept() {
        let verdict = HandOffPlan.verdict(clientCanResume: true, events: frames([delta, delta], first: 40), storeCanHandOff: true)
        #expect(verdict == .keep("its first events have left the replay buffer, so no other replica could rebuild it"))
    }

    /// A stream in a server tool round is handed off: the claimer rebuilds finished rounds and restarts the turn of
    /// one under way, as after a crash.
    @Test func aStreamInAServerToolRoundIsHandedOff() {
        let stop: JSONValue = ["type": "message_stop", "id": "msg_1", "stop_reason": "tool_use"]
        let tool: JSONValue = ["type": "tool_start", "id": "tu_1", "name": "read_file", "input": [:]]
        let verdict = HandOffPlan.verdict(clientCanResume: true, events: frames([start, delta, stop, tool]), storeCanHandOff: true)
        #expect(verdict == .handOff)
    }

    /// What a takeover could not continue (a log that contradicts itself) runs out the drain here.
    @Test func aStreamNoReplicaCouldContinueIsKept() {
        let stop: JSONValue = ["type": "message_stop", "id": "msg_1", "stop_reason": "tool_use"]
        let tool: JSONValue = ["type": "tool_start", "id": "tu_1", "name": "read_file", "input": [:]]
        let next: JSONValue = ["type": "message_start", "id": "msg_2"]
        let verdict = HandOffPlan.verdict(
            clientCanResume: true, events: frames([start, delta, stop, tool, next]), storeCanHandOff: true)
        guard case .keep(let why) = verdict else {
            Issue.record("expected keep, got \(verdict)")
            return
        }
        #expect(why.hasPrefix("another replica could not continue it: "))
    }

    @Test func aStreamThatHasJustEndedIsNotHandedOff() {
        let complete: JSONValue = ["type": "stream_complete", "usage": [:]]
        let verdict = HandOffPlan.verdict(clientCanResume: true, events: frames([start, delta, complete]), storeCanHandOff: true)
        #expect(verdict == .keep("it has just ended"))
    }

    @Test func aFrameThatIsNotJSONIsKept() {
        let verdict = HandOffPlan.verdict(
            clientCanResume: true, events: [(1, start.serialized()), (2, Array("{".utf8))], storeCanHandOff: true)
        #expect(verdict == .keep("event 2 is not JSON"))
    }
}
