import SluiceIO
import SluiceWire

/// The events of one SendMessage or Resume stream, each seq exactly once and in order, across the
/// automatic resumes after dropped connections (see `SluiceClient`). The sequence ends after
/// stream_complete, and throws `RPCError` when the stream ends otherwise (after stream_error, with its
/// code); `status` gives the final status either way. Cancelling the iterating task, or `cancel()`,
/// resets the call (RST_STREAM CANCEL), which cancels the stream on the server.
public final class SluiceEventStream: AsyncSequence, Sendable {
    public typealias Element = SluiceEvent
    public typealias AsyncIterator = AsyncThrowingStream<SluiceEvent, any Error>.Iterator

    private let events: AsyncThrowingStream<SluiceEvent, any Error>
    private let driver: ResumingCallDriver

    init(client: SluiceClient, machine: ResumeStateMachine, path: String, message: [UInt8], timeout: Duration?) {
        let (events, continuation) = AsyncThrowingStream<SluiceEvent, any Error>.makeStream()
        let driver = ResumingCallDriver(client: client, machine: machine, continuation: continuation)
        // Weak: the driver holds the continuation, and lives while a call (or a backoff) runs.
        continuation.onTermination = { [weak driver] reason in
            if case .cancelled = reason { driver?.cancel() }
        }
        self.events = events
        self.driver = driver
        driver.start(path: path, message: message, timeout: timeout)
    }

    public func makeAsyncIterator() -> AsyncIterator { events.makeAsyncIterator() }

    /// Waits for the stream to end.
    public var status: RPCClientStatus {
        get async { await driver.status() }
    }

    /// The stream's id, once its first event has arrived.
    public var streamID: String? { driver.snapshot.streamID }

    /// Resume calls made after dropped connections so far.
    public var resumeCount: Int { driver.snapshot.resumes }

    public func cancel() { driver.cancel() }
}

/// The shell around `ResumeStateMachine`: observes each call on the client's loop thread, feeds the
/// machine, and performs its actions (deliver, cancel, wait, call Resume, finish).
private final class ResumingCallDriver: RPCClientCallObserver {
    private struct State {
        var machine: ResumeStateMachine
        /// The call in flight.
        var handle: RPCClientCallHandle?
        var callsStarted = 0
        var callsEnded = 0
    }

    private let client: SluiceClient
    private let outcome: CallOutcome<SluiceEvent>
    private let state: LockedValue<State>

    init(client: SluiceClient, machine: ResumeStateMachine, continuation: AsyncThrowingStream<SluiceEvent, any Error>.Continuation) {
        self.client = client
        outcome = CallOutcome(continuation: continuation)
        state = LockedValue(State(machine: machine))
    }

    var snapshot: (streamID: String?, resumes: Int) {
        state.withLock { ($0.machine.streamID, $0.machine.resumes) }
    }

    func start(path: String, message: [UInt8], timeout: Duration?) {
        let call = state.withLock { state in
            state.callsStarted += 1
            return state.callsStarted
        }
        let handle = client.startCall(path: path, message: message, timeout: timeout, observer: self)
        // A cancel that came before the handle was stored reaches the call here. A call that has already
        // ended (and may have been followed by a Resume) keeps no handle.
        let cancelNow = state.withLock { state -> Bool in
            guard state.callsEnded < call else { return false }
            state.handle = handle
            return state.machine.cancelPending
        }
        if cancelNow { handle.cancel() }
    }

    func callReceived(_ message: [UInt8]) {
        let event: SluiceEvent
        do {
            event = try SluiceEvent(json: message)
        } catch {
            let status = RPCClientStatus(code: error.code, message: error.message)
            perform(state.withLock { $0.machine.invalidEvent(status) }, event: nil)
            return
        }
        perform(state.withLock { $0.machine.received(seq: event.seq, streamID: event.streamID, isLast: event.isLast) }, event: event)
    }

    private func perform(_ action: ResumeStateMachine.ReceiveAction, event: SluiceEvent?) {
        switch action {
        case .deliver: if let event { outcome.continuation.yield(event) }
        case .fail(let status):
            // The call's own end is then ignored.
            let handle = state.withLock { $0.handle }
            handle?.cancel()
            outcome.finish(status)
        case .dropDuplicate, .ignore: break
        }
    }

    func callFinished(_ status: RPCClientStatus) {
        let action = state.withLock { state -> ResumeStateMachine.EndAction in
            state.handle = nil
            state.callsEnded += 1
            return state.machine.callEnded(status)
        }
        switch action {
        case .finish(let status): outcome.finish(status)
        case .resume(let delay):
            Task { [self] in
                try? await Task.sleep(for: delay)
                backoffElapsed()
            }
        case .none: break
        }
    }

    private func backoffElapsed() {
        switch state.withLock({ $0.machine.backoffElapsed(now: .now) }) {
        case .startResume(let streamID, let afterSeq, let timeout):
            start(
                path: SluiceClient.resumePath, message: SluiceClient.resumeRequest(streamID: streamID, afterSeq: afterSeq), timeout: timeout
            )
        case .finish(let status): outcome.finish(status)
        case .none: break
        }
    }

    func cancel() {
        let (action, handle) = state.withLock { ($0.machine.cancel(), $0.handle) }
        switch action {
        case .cancelCall: handle?.cancel()
        case .finish(let status): outcome.finish(status)
        case .none: break
        }
    }

    func status() async -> RPCClientStatus {
        await outcome.status()
    }
}
