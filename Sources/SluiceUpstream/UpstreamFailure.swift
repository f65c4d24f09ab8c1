import SluiceWire

/// Why a call to the Anthropic API failed, whether trying again may succeed, and what to tell our client.
///
/// `retryable` says the failure is transient (the official SDKs would retry it); whether a retry is still
/// possible (nothing sent to our client yet, or a continuation can resume) is the caller's decision.
/// Messages are safe to show clients: upstream text is truncated, stripped of control characters and of
/// anything that looks like an Anthropic API key, and request headers are never included.
public struct UpstreamFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, Equatable, CaseIterable {
        case connectionFailed
        case connectionReset
        /// The stream ended before `message_stop`.
        case streamEndedEarly
        case httpStatus
        /// An `event: error` inside a 200 response.
        case errorEvent
        case idleTimeout
        case firstByteTimeout
        case invalidResponse
        case cancelled
    }

    public var kind: Kind
    public var retryable: Bool
    public var message: String
    public var httpStatus: Int?
    /// The API's error type, e.g. `overloaded_error`.
    public var errorType: String?
    public var retryAfter: Duration?
    public var requestID: String?

    /// `retryable` defaults to the classification of `kind`, `httpStatus` and `errorType`.
    public init(
        _ kind: Kind,
        message: String,
        retryable: Bool? = nil,
        httpStatus: Int? = nil,
        errorType: String? = nil,
        retryAfter: Duration? = nil,
        requestID: String? = nil
    ) {
        self.kind = kind
        self.message = Self.sanitize(message)
        self.httpStatus = httpStatus
        self.errorType = errorType
        self.retryAfter = retryAfter
        self.requestID = requestID
        self.retryable = retryable ?? Self.isRetryable(kind: kind, httpStatus: httpStatus, errorType: errorType)
    }

    public var description: String { message }

    /// A non-2xx response. Reads the API's error body (`{"type":"error","error":{"type","message"},"request_id"}`)
    /// when present, and the `request-id`, `retry-after-ms` (preferred), `retry-after` (seconds; HTTP dates are
    /// ignored) and `x-should-retry` (overrides the status, as in the SDKs) headers, case-insensitively.
    public static func http(status: Int, body: [UInt8], headers: [(String, String)]) -> UpstreamFailure {
        func header(_ name: String) -> String? {
            headers.first { $0.0.lowercased() == name }?.1.trimmingSpaces()
        }
        let json = try? JSONValue(parsing: body)
        let errorType = json?["error"]?["type"]?.stringValue
        let upstreamMessage = json?["error"]?["message"]?.stringValue
        let requestID = header("request-id") ?? json?["request_id"]?.stringValue
        let retryAfterMilliseconds = header("retry-after-ms").flatMap(parseDecimal)
        let retryAfter =
            retryAfterMilliseconds.map { Duration.milliseconds(min($0, maxRetryAfterSeconds * 1000)) }
            ?? header("retry-after").flatMap(parseDecimal).map { Duration.seconds(min($0, maxRetryAfterSeconds)) }
        let retryable: Bool? =
            switch header("x-should-retry")?.lowercased() {
            case "true": true
            case "false": false
            default: nil
            }

        var detail = errorType.map { " \($0)" } ?? ""
        if let upstreamMessage, !upstreamMessage.isEmpty {
            detail += ": \(upstreamMessage)"
        } else if json == nil, !body.isEmpty {
            detail += ": \(String(decoding: body.prefix(maxMessageLength), as: UTF8.self))"
        }
        var message =
            status == 401
            ? "Anthropic API rejected Sluice's credentials (HTTP 401\(detail));"
                + " the operator should check ANTHROPIC_API_KEY"
            : "Anthropic API returned HTTP \(status)\(detail)"
        if let requestID { message += " (request-id \(requestID))" }

        return UpstreamFailure(
            .httpStatus, message: message, retryable: retryable, httpStatus: status, errorType: errorType,
            retryAfter: retryAfter, requestID: requestID
        )
    }

    /// An `event: error` received mid-stream.
    public static func errorEvent(type: String, message: String, requestID: String? = nil) -> UpstreamFailure {
        var text = "Anthropic API stream error \(type)"
        if !message.isEmpty { text += ": \(message)" }
        if let requestID { text += " (request-id \(requestID))" }
        return UpstreamFailure(.errorEvent, message: text, errorType: type, requestID: requestID)
    }

    /// The status that ends our client's call when the upstream failed for good: the one mapping from upstream
    /// failure to gRPC status (`StreamAttempts.finalError` uses it). A mid-stream `error` event maps like the HTTP
    /// status the API documents for its type (`errorTypeStatus`).
    ///
    /// | Upstream failure                                                  | gRPC status        | Why                              |
    /// |-------------------------------------------------------------------|--------------------|----------------------------------|
    /// | connection failed or reset, stream ended early, first-byte or     | UNAVAILABLE        | transient: callers may retry     |
    /// | idle timeout, 408, any 5xx (500 api_error, 504 timeout_error,     |                    |                                  |
    /// | 529 overloaded_error)                                             |                    |                                  |
    /// | 429 rate_limit_error                                              | RESOURCE_EXHAUSTED | a quota: retry after backing off |
    /// | 400 invalid_request_error, 413 request_too_large, any other 4xx   | INVALID_ARGUMENT   | can never succeed as sent        |
    /// | 401 authentication_error, 402 billing_error                       | INTERNAL           | Sluice's own key and account,    |
    /// |                                                                   |                    | which the caller can't fix (and  |
    /// |                                                                   |                    | UNAUTHENTICATED means its token) |
    /// | 403 permission_error                                              | PERMISSION_DENIED  |                                  |
    /// | 404 not_found_error                                               | NOT_FOUND          | e.g. an unknown model            |
    /// | 409                                                               | ABORTED            | a conflict: retry at a higher level |
    /// | garbled response (malformed stream or event)                      | INTERNAL           |                                  |
    /// | cancelled by the consumer                                         | CANCELLED          |                                  |
    /// | unknown error type, status outside 4xx and 5xx                    | UNKNOWN            |                                  |
    public var grpcStatus: StatusCode {
        switch kind {
        case .connectionFailed, .connectionReset, .streamEndedEarly, .idleTimeout, .firstByteTimeout: .unavailable
        case .invalidResponse: .internal
        case .cancelled: .cancelled
        case .httpStatus: httpStatus.map(Self.grpcStatus(httpStatus:)) ?? .unknown
        case .errorEvent: errorType.flatMap { Self.errorTypeStatus[$0] }.map(Self.grpcStatus(httpStatus:)) ?? .unknown
        }
    }

    // MARK: - Classification

    /// The HTTP status the API documents for each error type; mid-stream errors are classified like it.
    private static let errorTypeStatus: [String: Int] = [
        "invalid_request_error": 400,
        "authentication_error": 401,
        "billing_error": 402,
        "permission_error": 403,
        "not_found_error": 404,
        "request_too_large": 413,
        "rate_limit_error": 429,
        "api_error": 500,
        "timeout_error": 504,
        "overloaded_error": 529,
    ]

    private static func isRetryable(kind: Kind, httpStatus: Int?, errorType: String?) -> Bool {
        switch kind {
        case .connectionFailed, .connectionReset, .streamEndedEarly, .idleTimeout, .firstByteTimeout: true
        case .invalidResponse, .cancelled: false
        case .httpStatus: httpStatus.map(isRetryable(httpStatus:)) ?? false
        case .errorEvent: errorType.flatMap { errorTypeStatus[$0] }.map(isRetryable(httpStatus:)) ?? false
        }
    }

    /// The SDKs' rule: 408, 409, 429 and every 5xx (529 included).
    private static func isRetryable(httpStatus: Int) -> Bool {
        [408, 409, 429].contains(httpStatus) || (500...599).contains(httpStatus)
    }

    private static func grpcStatus(httpStatus: Int) -> StatusCode {
        switch httpStatus {
        case 400, 413: .invalidArgument
        case 401, 402: .internal
        case 403: .permissionDenied
        case 404: .notFound
        case 408: .unavailable
        case 409: .aborted
        case 429: .resourceExhausted
        case 500...599: .unavailable
        case 400...499: .invalidArgument
        default: .unknown
        }
    }

    // MARK: - Parsing and sanitizing

    /// Retry delays past this are clamped: nobody waits longer, and it keeps `Duration` far from overflow.
    private static let maxRetryAfterSeconds = 86_400.0
    private static let maxMessageLength = 512

    /// ASCII digits with an optional fraction; nothing that `Double` alone would also take (`inf`, `1e3`, `-1`).
    private static func parseDecimal(_ text: String) -> Double? {
        let parts = text.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        let isDigits = { (part: Substring) in !part.isEmpty && part.allSatisfy { $0.isASCII && $0.isNumber } }
        return parts.allSatisfy(isDigits) ? Double(text) : nil
    }

    /// Redacts Anthropic API keys, replaces control characters, and truncates.
    private static func sanitize(_ text: String) -> String {
        // The regex is only built (costly) for text that may hold a key.
        var result = text.contains("sk-ant-") ? text.replacing(#/sk-ant-[A-Za-z0-9_\-]*/#, with: "sk-ant-[REDACTED]") : text
        result = String(
            String.UnicodeScalarView(
                result.unicodeScalars.map {
                    $0.properties.generalCategory == .control ? " " : $0
                }))
        if result.count > maxMessageLength { result = String(result.prefix(maxMessageLength)) + "…" }
        return result
    }
}

extension String {
    fileprivate func trimmingSpaces() -> String {
        var trimmed = Substring(self)
        while trimmed.first == " " || trimmed.first == "\t" { trimmed.removeFirst() }
        while trimmed.last == " " || trimmed.last == "\t" { trimmed.removeLast() }
        return String(trimmed)
    }
}
