import Testing

@testable import SluiceStore

@Suite struct OwnerLeaseTests {
    @Test func writesUntilTheFirstRefusalWhichAloneAborts() {
        var lease = OwnerLease(epoch: 3)
        #expect(lease.mayWrite)
        let first = lease.lose()
        #expect(first)
        #expect(!lease.mayWrite)
        // The writes already in flight are refused too: the stream was aborted once already.
        let again = lease.lose()
        #expect(!again)
        #expect(lease.epoch == 3)
    }
}
