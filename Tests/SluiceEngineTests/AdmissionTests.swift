import Testing

@testable import SluiceEngine

@Suite struct AdmissionTests {
    @Test func boundsActiveAndQueuedThenRejects() {
        var admission = Admission(limits: .init(maxActive: 2, maxQueued: 2))
        #expect(admission.admit(ticket: 1, key: "a") == .run)
        #expect(admission.admit(ticket: 2, key: "a") == .run)
        #expect(admission.admit(ticket: 3, key: "a") == .queued(position: 1))
        #expect(admission.admit(ticket: 4, key: "b") == .queued(position: 2))
        guard case .rejected(let reason) = admission.admit(ticket: 5, key: "c") else {
            Issue.record("a full queue must reject")
            return
        }
        #expect(reason.contains("limit 2"))
        #expect(admission.release(key: "a") == [3], "FIFO: the first queued starts")
        #expect(admission.positions.map(\.position) == [1])
        #expect(admission.active == 2)
    }

    @Test func withdrawnTicketsLeaveTheQueue() {
        var admission = Admission(limits: .init(maxActive: 1, maxQueued: 3))
        _ = admission.admit(ticket: 1, key: "a")
        _ = admission.admit(ticket: 2, key: "a")
        _ = admission.admit(ticket: 3, key: "a")
        let withdrawn = admission.withdraw(ticket: 2)
        let withdrawnTwice = admission.withdraw(ticket: 2)
        #expect(withdrawn)
        #expect(!withdrawnTwice)
        #expect(admission.positions.map(\.ticket) == [3])
        #expect(admission.release(key: "a") == [3])
    }

    @Test func perKeyLimitLetsOtherCallersPass() {
        var admission = Admission(limits: .init(maxActive: 3, maxQueued: 5, maxActivePerKey: 1))
        #expect(admission.admit(ticket: 1, key: "a") == .run)
        #expect(admission.admit(ticket: 2, key: "a") == .queued(position: 1))
        #expect(admission.admit(ticket: 3, key: "b") == .run, "b has room although a waits")
        #expect(admission.release(key: "b") == [], "a is still at its limit")
        #expect(admission.release(key: "a") == [2])
    }
}
