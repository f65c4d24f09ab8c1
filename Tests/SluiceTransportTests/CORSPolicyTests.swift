import Testing

@testable import SluiceTransport

@Suite struct CORSPolicyTests {
    let policy = CORSPolicy(allowedOrigins: ["https://app.example"])

    private func decide(_ method: String, _ headers: [String: String]) -> CORSPolicy.Decision {
        policy.decide(method: method, header: { headers[$0] })
    }

    @Test func anAllowedOriginGetsItsOriginBackAndTheExposedHeaders() {
        guard case .allow(let headers) = decide("POST", ["origin": "https://app.example"]) else {
            Issue.record("an allowed origin's request gets CORS headers")
            return
        }
        #expect(headers.contains { $0 == ("access-control-allow-origin", "https://app.example") })
        #expect(headers.contains { $0.0 == "access-control-expose-headers" && $0.1.contains("grpc-status") })
    }

    @Test func otherOriginsAndSameOriginRequestsGetNothing() {
        #expect(decide("POST", ["origin": "https://evil.example"]) == .none)
        #expect(decide("POST", [:]) == .none)
        #expect(CORSPolicy().decide(method: "POST", header: { $0 == "origin" ? "https://app.example" : nil }) == .none)
    }

    @Test func preflightsAreAnsweredAndOnlyAllowedOnesAllowed() {
        let asked = [
            "origin": "https://app.example", "access-control-request-method": "POST", "access-control-request-headers": "content-type",
        ]
        guard case .preflight(let headers) = decide("OPTIONS", asked) else {
            Issue.record("a preflight is answered")
            return
        }
        #expect(headers.contains { $0 == ("access-control-allow-headers", "content-type") })
        #expect(headers.contains { $0.0 == "access-control-allow-methods" && $0.1.contains("POST") })
        var refused = asked
        refused["origin"] = "https://evil.example"
        #expect(decide("OPTIONS", refused) == .preflight([("vary", "origin")]))
        // OPTIONS without Access-Control-Request-Method is not a preflight.
        #expect(decide("OPTIONS", ["origin": "https://evil.example"]) == .none)
    }
}
