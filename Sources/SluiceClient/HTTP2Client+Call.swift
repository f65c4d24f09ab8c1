import SluiceIO
import SluiceWire

/// A server-streaming call as an `AsyncSequence` of response message payloads (envelopes
/// decoded). The sequence ends normally after an OK status and throws `RPCError` otherwise;
/// `status` gives the final status either way. Ending the iteration early by cancelling its task,
/// or dropping the call before it finishes, resets the stream with CANCEL.
public final class RPCClientCall: AsyncSequence, Sendable {
    public typealias Element = [UInt8]
    public typealias AsyncIterator = AsyncThrowingStream<[UInt8], any Error>.Iterator

    private let messages: AsyncThrowingStream<[UInt8], any Error>
    private let observer: StreamingObserver
    private let handle: RPCClientCallHandle

    init(start: (any RPCClientCallObserver) -> RPCClientCallHandle) {
        let (messages, continuation) = AsyncThrowingStream<[UInt8], any Error>.makeStream()
        let observer = StreamingObserver(continuation: continuation)
        let handle = start(observer)
        continuation.onTermination = { reason in
            if case .cancelled = reason { handle.cancel() }
        }
        self.messages = messages
        self.observer = observer
        self.handle = handle
    }

    public func makeAsyncIterator() -> AsyncIterator { messages.makeAsyncIterator() }

    /// Waits for the call to end.
    public var status: RPCClientStatus {
        get async { await observer.status() }
    }

    public func cancel() { handle.cancel() }
}

/// Bridges loop-thread callbacks to the AsyncThrowingStream and the final status.
private final class StreamingObserver: RPCClientCallObserver {
    private let outcome: CallOutcome<[UInt8]>

    init(continuation: AsyncThrowingStream<[UInt8], any Error>.Continuation) {
        outcome = CallOutcome(continuation: continuation)
    }

    func callReceived(_ message: [UInt8]) {
        outcome.continuation.yield(message)
    }

    func callFinished(_ status: RPCClientStatus) {
        outcome.finish(status)
    }

    func status() async -> RPCClientStatus {
        await outcome.status()
    }
}
