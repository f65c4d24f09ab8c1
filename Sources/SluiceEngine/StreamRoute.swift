/// The front end a stream came through: the `route` label of the engine's metrics.
public enum StreamRoute: String, Sendable, CaseIterable {
    /// `sluice.v1.StreamingService` (gRPC, Connect streaming and unary, gRPC-Web).
    case rpc
    /// `/v1/streams`: Server-Sent Events.
    case sse
    /// `POST /v1/messages`: the Anthropic Messages API's own format.
    case messages
}
