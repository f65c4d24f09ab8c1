import SluiceWire

/// An error in the Anthropic Messages API's own shape, `{"type":"error","error":{"type","message"}}`, with the
/// HTTP status the API uses for its type, so the official SDKs raise their usual exception and retry (or not)
/// as they would against the API.
public struct MessagesAPIError: Error, Equatable, Sendable {
    public var status: Int
    public var type: String
    public var message: String
    /// Seconds, for `retry-after` (429).
    public var retryAfterSeconds: Int?

    public init(status: Int, type: String, message: String, retryAfterSeconds: Int? = nil) {
        self.status = status
        self.type = type
        self.message = message
        self.retryAfterSeconds = retryAfterSeconds
    }

    /// The API's error for a Sluice status: the one table between the engine's gRPC codes and the API's types.
    /// UNAVAILABLE (the upstream failed after Sluice's retries, or the server is draining) is `overloaded_error`
    /// 529, which the SDKs retry; RESOURCE_EXHAUSTED (Sluice's queue or a caller's limit is full) is 429 with
    /// `retry-after`.
    public init(_ error: RPCError) {
        let message = error.message
        switch error.code {
        case .invalidArgument, .failedPrecondition, .outOfRange:
            self.init(status: 400, type: "invalid_request_error", message: message)
        case .unauthenticated: self.init(status: 401, type: "authentication_error", message: message)
        case .permissionDenied: self.init(status: 403, type: "permission_error", message: message)
        case .notFound: self.init(status: 404, type: "not_found_error", message: message)
        case .resourceExhausted: self.init(status: 429, type: "rate_limit_error", message: message, retryAfterSeconds: 1)
        case .unavailable, .aborted: self.init(status: 529, type: "overloaded_error", message: message)
        case .deadlineExceeded: self.init(status: 504, type: "timeout_error", message: message)
        default: self.init(status: 500, type: "api_error", message: message)
        }
    }

    /// The error a `stream_error` frame (`{error, details: {code}}`) stands for.
    init(streamError frame: JSONValue) {
        let code = frame["details"]?["code"]?.stringValue.flatMap { name in StatusCode.allCases.first { $0.name == name } }
        self.init(RPCError(code ?? .unknown, frame["error"]?.stringValue ?? "the stream failed"))
    }

    public var body: JSONValue {
        ["type": "error", "error": ["type": .string(type), "message": .string(message)]]
    }

    public var headers: [(String, String)] {
        var headers = [("content-type", "application/json")]
        if let retryAfterSeconds { headers.append(("retry-after", String(retryAfterSeconds))) }
        return headers
    }
}
