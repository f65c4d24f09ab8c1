/// How a `SluiceEventStream` resumes after its call drops: bounded attempts with exponential backoff.
public struct SluiceResumePolicy: Sendable, Equatable {
    /// Resume calls in a row that may fail before the stream gives up; an event that arrives starts the
    /// count again. 0 turns automatic resume off.
    public var maxAttempts: Int
    /// Wait before the first resume; each failed attempt doubles it, up to `maxBackoff`.
    public var initialBackoff: Duration
    public var maxBackoff: Duration

    public init(maxAttempts: Int = 5, initialBackoff: Duration = .milliseconds(100), maxBackoff: Duration = .seconds(2)) {
        precondition(maxAttempts >= 0, "maxAttempts must be 0 or more")
        self.maxAttempts = maxAttempts
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
    }
}
