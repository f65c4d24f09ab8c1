import Testing

@testable import SluiceSimulator

@Suite struct TraceTableTests {
    @Test func keepsTheLastTraceparentAndCountsRequestsPerTrace() {
        var table = TraceTable(capacity: 4)
        table.record(traceID: "a", traceparent: "first")
        table.record(traceID: "a", traceparent: "second")
        #expect(table.entry(traceID: "a") == .init(traceparent: "second", requests: 2))
        #expect(table.entry(traceID: "b") == nil)
    }

    @Test func forgetsTheOldestTracesPastItsCapacity() {
        var table = TraceTable(capacity: 4)
        for id in ["a", "b", "c", "d", "e"] { table.record(traceID: id, traceparent: id) }
        #expect(table.entry(traceID: "a") == nil && table.entry(traceID: "b") == nil)
        #expect(table.entry(traceID: "e")?.traceparent == "e")
    }
}
