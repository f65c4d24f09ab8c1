import SluiceIO
import SluiceWire

/// A client of a Sluice server's `sluice.v1.StreamingService`.
///
/// ```swift
/// let client = try SluiceClient(target: "http://127.0.0.1:8080")
/// let stream = client.sendMessage(SluiceMessageRequest(model: "claude-sonnet-4-5", maxTokens: 256, prompt: "Hello"))
/// for try await event in stream {
///     if case .messageDelta(_, let text) = event.kind { print(text, terminator: "") }
/// }
/// await client.shutdown()
/// ```
///
/// A stream whose connection drops before its last event (the call fails with UNAVAILABLE) is resumed
/// automatically: the client calls Resume with the stream's id after the last seq it delivered, with bounded
/// retries and exponential backoff (`SluiceClientConfiguration.resume`), so the consumer sees every seq
/// exactly once and in order. When the server can no longer replay (the stream expired, or its replay buffer
/// moved past that seq), or the retries run out, the sequence throws an `RPCError` saying so.
public final class SluiceClient: Sendable {
    public static let sendMessagePath = "/sluice.v1.StreamingService/SendMessage"
    public static let resumePath = "/sluice.v1.StreamingService/Resume"
    public static let cancelPath = "/sluice.v1.StreamingService/Cancel"

    public let target: HTTP2Target
    public let configuration: SluiceClientConfiguration
    let http2: HTTP2Client
    private let headers: [(String, String)]

    /// `target` is `http://host:port` (h2c) or `https://host:port` (TLS).
    public init(target: String, configuration: SluiceClientConfiguration = .init()) throws {
        self.target = try HTTP2Target(url: target)
        self.configuration = configuration
        headers = configuration.bearerToken.map { [("authorization", "Bearer \($0)")] } ?? []
        http2 = try HTTP2Client(loops: configuration.eventLoops, configuration: configuration.http2)
    }

    /// The client's event loops: periodic work of the caller's can run there as a task executor.
    public var eventLoops: [EventLoop] { http2.eventLoops }

    /// Connections open (or opening) now.
    public var openConnections: Int { http2.openConnections }

    /// Starts a stream; `timeout` is its deadline (sent as `grpc-timeout`), which resumes share.
    public func sendMessage(_ request: SluiceMessageRequest, timeout: Duration? = nil) -> SluiceEventStream {
        sendMessage(json: request.json, timeout: timeout)
    }

    /// Starts a stream from a request given as JSON, e.g. with members `SluiceMessageRequest` does not name.
    public func sendMessage(json request: JSONValue, timeout: Duration? = nil) -> SluiceEventStream {
        let machine = ResumeStateMachine(policy: configuration.resume, deadline: timeout.map { .now + $0 })
        return SluiceEventStream(
            client: self, machine: machine, path: Self.sendMessagePath, message: request.serialized(), timeout: timeout)
    }

    /// Re-attaches to a running (or recently finished) stream: the events after `afterSeq`, then live ones.
    public func resume(streamID: String, afterSeq: Int = 0, timeout: Duration? = nil) -> SluiceEventStream {
        let machine = ResumeStateMachine(
            policy: configuration.resume, streamID: streamID, afterSeq: afterSeq, deadline: timeout.map { .now + $0 }
        )
        return SluiceEventStream(
            client: self, machine: machine, path: Self.resumePath, message: Self.resumeRequest(streamID: streamID, afterSeq: afterSeq),
            timeout: timeout
        )
    }

    /// Ends a stream (its events end with stream_error CANCELLED). Throws `RPCError` when the server
    /// refuses, e.g. NOT_FOUND for an unknown or expired stream.
    public func cancel(streamID: String, timeout: Duration? = .seconds(10)) async throws {
        let call = startCall(
            path: Self.cancelPath, message: JSONValue.object(["stream_id": .string(streamID)]).serialized(), timeout: timeout)
        for try await _ in call {}
    }

    /// A raw call, without decoding or resume: for load generators that run many thousands of streams
    /// (`observer` runs on a loop thread, and a call costs no task).
    @discardableResult
    public func startCall(
        path: String, message: [UInt8], timeout: Duration? = nil, observer: any RPCClientCallObserver
    ) -> RPCClientCallHandle {
        http2.startCall(target: target, path: path, headers: headers, message: message, timeout: timeout, observer: observer)
    }

    /// A raw call as an `AsyncSequence` of response messages, without decoding or resume.
    public func startCall(path: String, message: [UInt8], timeout: Duration? = nil) -> RPCClientCall {
        RPCClientCall { observer in
            startCall(path: path, message: message, timeout: timeout, observer: observer)
        }
    }

    /// Closes every connection as a network failure would (their calls fail with UNAVAILABLE); later calls
    /// connect again. For tests of what happens when a connection drops.
    package func dropConnections() {
        http2.dropConnections(reason: "dropped by the client")
    }

    /// Fails the calls still running with UNAVAILABLE, closes the connections and stops the loops.
    public func shutdown() async {
        await http2.shutdown()
    }

    static func resumeRequest(streamID: String, afterSeq: Int) -> [UInt8] {
        JSONValue.object(["stream_id": .string(streamID), "after_seq": .integer(afterSeq)]).serialized()
    }
}
