import SluiceWire

/// The decisions of one `SluiceEventStream`, without I/O: which seq comes next, when a dropped call is
/// resumed (and after how long), and when to give up. The stream's shell feeds it what its calls report
/// and performs the actions it returns.
///
/// States: `calling` (a SendMessage or Resume call is in flight), `backingOff` (waiting before the next
/// Resume), `finished`. Events: `received` (an event frame), `callEnded` (the call's final status),
/// `backoffElapsed`, `cancel`.
struct ResumeStateMachine {
    enum State: Equatable {
        case calling
        case backingOff
        case finished(RPCClientStatus)
    }

    enum ReceiveAction: Equatable {
        /// Hand the event to the consumer.
        case deliver
        /// Already delivered (a replay overlapping what arrived before): drop it.
        case dropDuplicate
        /// The stream broke its contract: cancel the call and end the stream with this status.
        case fail(RPCClientStatus)
        /// The stream has already ended: ignore.
        case ignore
    }

    enum EndAction: Equatable {
        /// End the stream with this status.
        case finish(RPCClientStatus)
        /// Wait `delay`, then report `backoffElapsed`.
        case resume(after: Duration)
        case none
    }

    enum BackoffAction: Equatable {
        /// Call Resume for `streamID` after `afterSeq`, with `timeout` (the rest of the stream's deadline).
        case startResume(streamID: String, afterSeq: Int, timeout: Duration?)
        case finish(RPCClientStatus)
        case none
    }

    enum CancelAction: Equatable {
        /// Cancel the call in flight; the stream ends when it reports its status.
        case cancelCall
        case finish(RPCClientStatus)
        case none
    }

    private(set) var state = State.calling
    private(set) var streamID: String?
    /// The last seq delivered; the next must be `lastSeq + 1`.
    private(set) var lastSeq: Int
    /// Resume calls started by this machine.
    private(set) var resumes = 0
    private let policy: SluiceResumePolicy
    private let deadline: ContinuousClock.Instant?
    /// The stream's last event (stream_complete or stream_error) was delivered: nothing is left to resume.
    private var sawLastEvent = false
    private var failedAttempts = 0
    private var cancelRequested = false
    /// A number in 0..<1 for each backoff's jitter; tests pass a fixed one.
    private let randomFraction: @Sendable () -> Double

    /// `streamID` and `afterSeq` are known for a stream that starts with Resume; SendMessage learns its id
    /// from the first event.
    init(
        policy: SluiceResumePolicy, streamID: String? = nil, afterSeq: Int = 0, deadline: ContinuousClock.Instant? = nil,
        randomFraction: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }
    ) {
        self.policy = policy
        self.streamID = streamID
        self.lastSeq = afterSeq
        self.deadline = deadline
        self.randomFraction = randomFraction
    }

    /// `cancel` was asked while a call was in flight (the call may not have been started yet).
    var cancelPending: Bool { cancelRequested && state == .calling }

    mutating func received(seq: Int, streamID eventStreamID: String, isLast: Bool) -> ReceiveAction {
        guard state == .calling, !sawLastEvent else { return .ignore }
        if let streamID, streamID != eventStreamID {
            return fail(.internal, "an event of stream \(eventStreamID) arrived on stream \(streamID)")
        }
        if seq <= lastSeq { return .dropDuplicate }
        guard seq == lastSeq + 1 else {
            let missing = seq == lastSeq + 2 ? "event \(lastSeq + 1)" : "events \(lastSeq + 1)–\(seq - 1)"
            return fail(.dataLoss, "\(missing) of stream \(eventStreamID) never arrived (the next was seq \(seq))")
        }
        streamID = eventStreamID
        lastSeq = seq
        sawLastEvent = isLast
        failedAttempts = 0
        return .deliver
    }

    /// A frame that is not a valid event: end the stream with `status`.
    mutating func invalidEvent(_ status: RPCClientStatus) -> ReceiveAction {
        guard state == .calling else { return .ignore }
        state = .finished(status)
        return .fail(status)
    }

    mutating func callEnded(_ status: RPCClientStatus) -> EndAction {
        guard state == .calling else { return .none }
        guard !status.isOK, !sawLastEvent, !cancelRequested else { return finish(status) }
        guard status.code == .unavailable, let streamID else {
            if resumes > 0, status.code == .notFound || status.code == .dataLoss {
                return finish(
                    RPCClientStatus(
                        code: status.code, message: "stream \(streamID ?? "?") cannot be resumed after seq \(lastSeq): \(status.message)",
                        httpStatus: status.httpStatus
                    ))
            }
            return finish(status)
        }
        guard failedAttempts < policy.maxAttempts else {
            let tried = policy.maxAttempts == 0 ? "automatic resume is off" : "gave up after \(policy.maxAttempts) resume attempts"
            return finish(
                RPCClientStatus(
                    code: .unavailable,
                    message: "\(status.message) (\(tried); the stream may still be running: resume \(streamID) after seq \(lastSeq))",
                    httpStatus: status.httpStatus
                ))
        }
        let delay = backoff(attempt: failedAttempts)
        failedAttempts += 1
        state = .backingOff
        return .resume(after: delay)
    }

    mutating func backoffElapsed(now: ContinuousClock.Instant) -> BackoffAction {
        guard state == .backingOff, let streamID else { return .none }
        var timeout: Duration?
        if let deadline {
            guard now < deadline else {
                if case .finish(let status) = finish(
                    .deadlineExceeded, "the deadline passed while resuming stream \(streamID) after seq \(lastSeq)")
                {
                    return .finish(status)
                }
                return .none
            }
            timeout = deadline - now
        }
        state = .calling
        resumes += 1
        return .startResume(streamID: streamID, afterSeq: lastSeq, timeout: timeout)
    }

    mutating func cancel() -> CancelAction {
        switch state {
        case .calling:
            guard !cancelRequested else { return .none }
            cancelRequested = true
            return .cancelCall
        case .backingOff:
            let status = RPCClientStatus(code: .cancelled, message: "the stream was cancelled by the client")
            state = .finished(status)
            return .finish(status)
        case .finished:
            return .none
        }
    }

    /// `initialBackoff · 2^attempt`, at most `maxBackoff`, less a random part of up to `jitter` of it.
    private func backoff(attempt: Int) -> Duration {
        var delay = policy.initialBackoff
        for _ in 0..<min(attempt, 30) where delay < policy.maxBackoff { delay *= 2 }
        return min(delay, policy.maxBackoff) * (1 - policy.jitter * randomFraction())
    }

    private mutating func finish(_ status: RPCClientStatus) -> EndAction {
        state = .finished(status)
        return .finish(status)
    }

    private mutating func finish(_ code: StatusCode, _ message: String) -> EndAction {
        finish(RPCClientStatus(code: code, message: message))
    }

    private mutating func fail(_ code: StatusCode, _ message: String) -> ReceiveAction {
        let status = RPCClientStatus(code: code, message: message)
        state = .finished(status)
        return .fail(status)
    }
}
