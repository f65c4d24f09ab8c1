import SluiceUpstream
import SluiceWire
import Testing

@Suite struct UpstreamFailureTests {
    static func body(_ type: String, _ message: String, requestID: String? = nil) -> [UInt8] {
        var json: JSONValue = ["type": "error", "error": ["type": .string(type), "message": .string(message)]]
        if let requestID, case .object(var object) = json {
            object["request_id"] = .string(requestID)
            json = .object(object)
        }
        return json.serialized()
    }

    @Test(arguments: [
        (400, "invalid_request_error", false, StatusCode.invalidArgument),
        (401, "authentication_error", false, .internal),
        (402, "billing_error", false, .internal),
        (403, "permission_error", false, .permissionDenied),
        (404, "not_found_error", false, .notFound),
        (408, "timeout", true, .unavailable),
        (409, "conflict", true, .aborted),
        (413, "request_too_large", false, .invalidArgument),
        (422, "unprocessable", false, .invalidArgument),
        (429, "rate_limit_error", true, .resourceExhausted),
        (500, "api_error", true, .unavailable),
        (501, "not_implemented", true, .unavailable),
        (502, "bad_gateway", true, .unavailable),
        (503, "unavailable", true, .unavailable),
        (504, "timeout_error", true, .unavailable),
        (529, "overloaded_error", true, .unavailable),
        (302, "redirect", false, .unknown),
    ])
    func classifiesHTTPStatuses(_ status: Int, _ type: String, _ retryable: Bool, _ grpc: StatusCode) {
        let failure = UpstreamFailure.http(status: status, body: Self.body(type, "details"), headers: [])
        #expect(failure.kind == .httpStatus)
        #expect(failure.httpStatus == status)
        #expect(failure.errorType == type)
        #expect(failure.retryable == retryable)
        #expect(failure.grpcStatus == grpc)
        #expect(failure.message.contains("\(status)"))
        #expect(failure.message.contains("details"))
    }

    @Test(arguments: [
        ("overloaded_error", true, StatusCode.unavailable),
        ("api_error", true, .unavailable),
        ("rate_limit_error", true, .resourceExhausted),
        ("timeout_error", true, .unavailable),
        ("invalid_request_error", false, .invalidArgument),
        ("authentication_error", false, .internal),
        ("billing_error", false, .internal),
        ("permission_error", false, .permissionDenied),
        ("not_found_error", false, .notFound),
        ("request_too_large", false, .invalidArgument),
        ("mystery_error", false, .unknown),
    ])
    func classifiesErrorEvents(_ type: String, _ retryable: Bool, _ grpc: StatusCode) {
        let failure = UpstreamFailure.errorEvent(type: type, message: "Something happened", requestID: "req_1")
        #expect(failure.kind == .errorEvent)
        #expect(failure.errorType == type)
        #expect(failure.httpStatus == nil)
        #expect(failure.retryable == retryable)
        #expect(failure.grpcStatus == grpc)
        #expect(failure.requestID == "req_1")
        #expect(failure.message == "Anthropic API stream error \(type): Something happened (request-id req_1)")
    }

    @Test(arguments: [
        (UpstreamFailure.Kind.connectionFailed, true, StatusCode.unavailable),
        (.connectionReset, true, .unavailable),
        (.streamEndedEarly, true, .unavailable),
        (.idleTimeout, true, .unavailable),
        (.firstByteTimeout, true, .unavailable),
        (.invalidResponse, false, .internal),
        (.cancelled, false, .cancelled),
    ])
    func classifiesOtherKinds(_ kind: UpstreamFailure.Kind, _ retryable: Bool, _ grpc: StatusCode) {
        let failure = UpstreamFailure(kind, message: "it broke")
        #expect(failure.retryable == retryable)
        #expect(failure.grpcStatus == grpc)
        #expect(failure.description == "it broke")
        #expect(UpstreamFailure(kind, message: "x", retryable: !retryable).retryable == !retryable)
    }

    /// UNAVAILABLE tells gRPC callers to retry: it must never end a call that retrying cannot fix.
    @Test func onlyRetryableFailuresAreUnavailable() {
        let types = [
            "invalid_request_error", "authentication_error", "billing_error", "permission_error", "not_found_error",
            "request_too_large", "rate_limit_error", "api_error", "timeout_error", "overloaded_error", "mystery_error",
        ]
        var failures = (100...599).map { UpstreamFailure.http(status: $0, body: [], headers: []) }
        failures += types.map { UpstreamFailure.errorEvent(type: $0, message: "") }
        failures += UpstreamFailure.Kind.allCases.map { UpstreamFailure($0, message: "") }
        for failure in failures where failure.grpcStatus == .unavailable {
            #expect(failure.retryable, "\(failure.message) is UNAVAILABLE but not retryable")
        }
    }

    @Test func readsTheErrorBodyAndRequestID() {
        let failure = UpstreamFailure.http(
            status: 429,
            body: Self.body("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit", requestID: "req_body"),
            headers: [("Request-Id", "req_header"), ("retry-after", "12")]
        )
        #expect(failure.requestID == "req_header")
        #expect(failure.retryAfter == .seconds(12))
        #expect(
            failure.message
                == "Anthropic API returned HTTP 429 rate_limit_error: Number of request tokens has exceeded your per-minute rate limit (request-id req_header)"
        )

        let fromBody = UpstreamFailure.http(
            status: 400, body: Self.body("invalid_request_error", "bad", requestID: "req_body"), headers: [])
        #expect(fromBody.requestID == "req_body")
    }

    @Test func unauthorizedTellsTheOperatorToCheckTheKey() {
        let failure = UpstreamFailure.http(status: 401, body: Self.body("authentication_error", "invalid x-api-key"), headers: [])
        #expect(failure.grpcStatus == .internal)
        #expect(!failure.retryable)
        #expect(failure.message.contains("ANTHROPIC_API_KEY"))
        #expect(failure.message.contains("invalid x-api-key"))
    }

    @Test(
        arguments: [
            ([("retry-after", "30")], Duration.seconds(30)),
            ([("Retry-After", " 1.5 ")], .milliseconds(1500)),
            ([("retry-after-ms", "250")], .milliseconds(250)),
            ([("retry-after", "30"), ("RETRY-AFTER-MS", "250.5")], .microseconds(250_500)),
            ([("retry-after-ms", "soon"), ("retry-after", "2")], .seconds(2)),
            ([("retry-after", "99999999999")], .seconds(86_400)),
            ([("retry-after", "0")], .zero),
        ] as [([(String, String)], Duration)])
    func parsesRetryAfter(_ headers: [(String, String)], _ expected: Duration) {
        #expect(UpstreamFailure.http(status: 429, body: [], headers: headers).retryAfter == expected)
    }

    @Test(arguments: ["", "-1", "1e3", "abc", "1.", ".5", "1.2.3", "inf", "NaN", "Wed, 21 Oct 2015 07:28:00 GMT", "٣"])
    func ignoresInvalidRetryAfter(_ value: String) {
        let failure = UpstreamFailure.http(status: 429, body: [], headers: [("retry-after", value), ("retry-after-ms", value)])
        #expect(failure.retryAfter == nil)
    }

    @Test func shouldRetryHeaderOverridesTheStatus() {
        #expect(UpstreamFailure.http(status: 400, body: [], headers: [("X-Should-Retry", "true")]).retryable)
        #expect(!UpstreamFailure.http(status: 503, body: [], headers: [("x-should-retry", "false")]).retryable)
        #expect(UpstreamFailure.http(status: 503, body: [], headers: [("x-should-retry", "maybe")]).retryable)
    }

    @Test func nonJSONBodiesAreQuotedSafely() {
        let html = Array("<html>\r\n<body>502 Bad Gateway</body>\r\n</html>".utf8)
        let failure = UpstreamFailure.http(status: 502, body: html, headers: [])
        #expect(failure.errorType == nil)
        #expect(failure.message == "Anthropic API returned HTTP 502: <html>  <body>502 Bad Gateway</body>  </html>")

        let huge = UpstreamFailure.http(status: 500, body: Array(repeating: UInt8(ascii: "x"), count: 100_000), headers: [])
        #expect(huge.message.count < 600)
        #expect(huge.message.hasSuffix("…"))

        #expect(UpstreamFailure.http(status: 503, body: [], headers: []).message == "Anthropic API returned HTTP 503")
    }

    @Test func messagesNeverContainKeysOrRequestHeaders() {
        let key = "sk-ant-api03-AbC_dEf-123456789"
        let failure = UpstreamFailure.http(
            status: 401,
            body: Self.body("authentication_error", "invalid x-api-key \(key)"),
            headers: [("x-api-key", key), ("authorization", "Bearer \(key)"), ("request-id", "req_9")]
        )
        #expect(!failure.message.contains("AbC_dEf"))
        #expect(!failure.message.contains("Bearer"))
        #expect(failure.message.contains("sk-ant-[REDACTED]"))
        #expect(!UpstreamFailure(.connectionFailed, message: "proxy said \(key)").message.contains("AbC_dEf"))
        #expect(!UpstreamFailure.errorEvent(type: "api_error", message: key).message.contains("AbC_dEf"))
    }
}
