public struct SluiceClientConfiguration: Sendable {
    /// Connections, TLS trust, message size limit, connect timeout.
    public var http2 = HTTP2ClientConfiguration()
    /// Client event-loop threads.
    public var eventLoops = 1
    /// Sent as `authorization: Bearer …` on every call when the server requires caller keys.
    public var bearerToken: String?
    /// How a SendMessage or Resume stream resumes after its connection drops.
    public var resume = SluiceResumePolicy()

    public init() {}
}
