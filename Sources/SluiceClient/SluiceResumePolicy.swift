/// How a `SluiceEventStream` resumes after its call drops: bounded attempts with jittered exponential backoff.
public struct SluiceResumePolicy: Sendable, Equatable {
    /// Resume calls in a row that may fail before the stream gives up; an event that arrives starts the
    /// count again. 0 turns automatic resume off.
    public var maxAttempts: Int
    /// Wait before the first resume; each failed attempt doubles it, up to `maxBackoff`.
    public var initialBackoff: Duration
    public var maxBackoff: Duration
    /// Each wait is shortened by a random part of up to this fraction (0...1), so the clients of a replica that
    /// went away do not all come back in the same instant.
    public var jitter: Double

    public init(
        maxAttempts: Int = 5, initialBackoff: Duration = .milliseconds(100), maxBackoff: Duration = .seconds(2), jitter: Double = 0.5
    ) {
        precondition(maxAttempts >= 0, "maxAttempts must be 0 or more")
        precondition((0...1).contains(jitter), "jitter must be between 0 and 1")
        self.maxAttempts = maxAttempts
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
        self.jitter = jitter
    }
}
