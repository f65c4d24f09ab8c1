import Testing

@testable import SluiceEngine

@Suite struct StreamTraceTests {
    @Test func aCallersTraceIsContinuedByEveryAttempt() throws {
        let trace = StreamTrace(traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", tracestate: "acme=7")
        #expect(trace.ignoredReason == nil)
        #expect(trace.traceID == "4bf92f3577b34da6a3ce929d0e0e4736")
        let first = trace.childHeaders()
        let second = trace.childHeaders()
        let parent = try #require(first.first { $0.0 == "traceparent" }?.1)
        #expect(parent.hasPrefix("00-4bf92f3577b34da6a3ce929d0e0e4736-") && parent.hasSuffix("-01"))
        #expect(!parent.contains("00f067aa0ba902b7"), "a child span, not the caller's")
        #expect(first.first { $0.0 == "traceparent" }?.1 != second.first { $0.0 == "traceparent" }?.1, "a new span per attempt")
        #expect(first.contains { $0 == ("tracestate", "acme=7") })
    }

    @Test func aMissingOrMalformedTraceparentStartsANewTrace() {
        let fresh = StreamTrace(traceparent: nil, tracestate: nil)
        #expect(fresh.ignoredReason == nil)
        #expect(fresh.traceID.count == 32 && fresh.traceID != String(repeating: "0", count: 32))
        #expect(fresh.traceID != StreamTrace(traceparent: nil, tracestate: nil).traceID)
        for bad in [
            "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            let trace = StreamTrace(traceparent: bad, tracestate: "acme=7")
            #expect(trace.ignoredReason?.hasPrefix("malformed traceparent") == true, "\(bad)")
            #expect(trace.childHeaders().count == 1, "no tracestate without the trace it belongs to")
        }
    }
}
