/// When to retry an interrupted upstream stream, and how long to wait first.
public struct RetryPolicy: Sendable {
    public var maxRetries: Int
    public var baseDelay: Duration
    public var maxDelay: Duration
    /// The longest `retry-after` honoured; longer waits fail the stream instead of holding a slot.
    public var maxRetryAfter: Duration

    public init(
        maxRetries: Int = 3, baseDelay: Duration = .milliseconds(500), maxDelay: Duration = .seconds(8),
        maxRetryAfter: Duration = .seconds(30)
    ) {
        self.maxRetries = maxRetries
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.maxRetryAfter = maxRetryAfter
    }

    /// Exponential backoff with up to 25 % jitter subtracted (as the official SDKs do), but never
    /// shorter than the upstream's `retry-after`. `attempt` counts from 1. `unitRandom` is in [0, 1).
    public func delay(attempt: Int, retryAfter: Duration?, unitRandom: Double) -> Duration {
        let exponent = min(max(attempt - 1, 0), 30)
        var backoff = baseDelay * (1 << exponent)
        if backoff > maxDelay { backoff = maxDelay }
        backoff = backoff * (1 - 0.25 * unitRandom)
        if let retryAfter { return max(backoff, min(retryAfter, maxRetryAfter)) }
        return backoff
    }
}
