import SluiceUpstream
import SluiceWire
import Testing

@testable import SluiceEngine

/// How an upstream failure that ends a stream becomes its status: always `UpstreamFailure.grpcStatus`.
extension StreamEngineTests {
    static func errorBody(_ type: String) -> [UInt8] {
        Array(#"{"type":"error","error":{"type":"\#(type)","message":"details"}}"#.utf8)
    }

    @Test(
        arguments: [
            (UpstreamFailure.errorEvent(type: "invalid_request_error", message: "bad"), StatusCode.invalidArgument),
            (.errorEvent(type: "overloaded_error", message: "Overloaded"), .unavailable),
            (.errorEvent(type: "rate_limit_error", message: "slow down"), .resourceExhausted),
            (.errorEvent(type: "billing_error", message: "no credit"), .internal),
            (.errorEvent(type: "mystery_error", message: "?"), .unknown),
            (.http(status: 400, body: errorBody("invalid_request_error"), headers: []), .invalidArgument),
            (.http(status: 401, body: errorBody("authentication_error"), headers: []), .internal),
            (.http(status: 402, body: errorBody("billing_error"), headers: []), .internal),
            (.http(status: 403, body: errorBody("permission_error"), headers: []), .permissionDenied),
            (.http(status: 404, body: errorBody("not_found_error"), headers: []), .notFound),
            (.http(status: 409, body: [], headers: []), .aborted),
            (.http(status: 413, body: errorBody("request_too_large"), headers: []), .invalidArgument),
            (.http(status: 429, body: errorBody("rate_limit_error"), headers: []), .resourceExhausted),
            (.http(status: 529, body: errorBody("overloaded_error"), headers: []), .unavailable),
            (UpstreamFailure(.connectionReset, message: "reset"), .unavailable),
            (UpstreamFailure(.idleTimeout, message: "idle"), .unavailable),
            (UpstreamFailure(.invalidResponse, message: "garbled"), .internal),
        ] as [(UpstreamFailure, StatusCode)])
    func finalErrorIsTheFailuresGRPCStatus(_ failure: UpstreamFailure, _ expected: StatusCode) {
        let error = StreamAttempts.finalError(failure, attempts: 3)
        #expect(failure.grpcStatus == expected)
        #expect(error.code == expected)
        #expect(error.message == "the upstream failed after 3 attempts: \(failure.message)")
    }

    @Test func invalidRequestErrorEventEndsAsInvalidArgumentWithoutRetries() async throws {
        let rejected = UpstreamFailure.errorEvent(type: "invalid_request_error", message: "prompt is too long", requestID: "req_7")
        let upstream = FakeUpstream([Array(FakeUpstream.message(["Hi"]).prefix(2)) + [.fail(rejected)]])
        let (events, end) = try await collect(try makeEngine(upstream).start(Self.request, caller: "a", deadline: nil))
        #expect(types(events) == ["message_start", "stream_error"])
        #expect(end?.code == .invalidArgument)
        #expect(end?.message == "the upstream failed: \(rejected.message) (upstream request-id req_7)")
        #expect(events.last?["details"]?["code"] == "INVALID_ARGUMENT")
        #expect(upstream.requests.withLock { $0.count } == 1)
    }

    @Test func billingErrorEndsAsInternalWithoutRetries() async throws {
        let billing = UpstreamFailure.http(status: 402, body: Self.errorBody("billing_error"), headers: [])
        let upstream = FakeUpstream([[.fail(billing)], FakeUpstream.message(["never"])])
        let (_, end) = try await collect(try makeEngine(upstream).start(Self.request, caller: "a", deadline: nil))
        #expect(end?.code == .internal)
        #expect(upstream.requests.withLock { $0.count } == 1)
    }

    @Test func conflictsAreRetriedThenEndAsAborted() async throws {
        let conflict = UpstreamFailure.http(status: 409, body: [], headers: [])
        let upstream = FakeUpstream(Array(repeating: [.fail(conflict)], count: 4))
        let (events, end) = try await collect(try makeEngine(upstream).start(Self.request, caller: "a", deadline: nil))
        #expect(types(events) == ["message_start", "upstream_retry", "upstream_retry", "upstream_retry", "stream_error"])
        #expect(end?.code == .aborted)
    }
}
