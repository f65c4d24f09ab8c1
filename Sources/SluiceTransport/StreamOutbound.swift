import SluiceIO
import SluiceWire

/// The bounded queue between a handler (any thread) and its HTTP/2 stream (loop thread).
///
/// The handler appends whole envelopes; the loop's data provider drains bytes, coalescing
/// whatever is queued into as few DATA frames as nghttp2 allows. When more than
/// `capacity` bytes wait, the handler suspends until the loop has drained below half of it,
/// so a client that stops reading costs at most `capacity` bytes per stream.
final class StreamOutbound: Sendable {
    struct Drained {
        var byteCount: Int
        var endOfStream: Bool
        var status: (code: StatusCode, message: String)?
    }

    private struct State {
        var buffer: [UInt8] = []
        var readIndex = 0
        /// Set when the handler is done (or the call was ended for it); nothing more is queued after.
        var status: (code: StatusCode, message: String)?
        var producerWaiting: CheckedContinuation<Void, any Error>?
        /// Set by the loop when the stream is gone: writes fail from then on.
        var closedReason: RPCError?
        var disconnect: RPCDisconnect?
        /// True while the loop is not going to look at this queue again unless woken.
        var loopIdle = true
        /// Plain HTTP responses: status and headers, set by the handler before its body.
        var head: [(String, String)]?
        /// Bytes drained since the call began: with what is queued, the stream offset a queued message ends at.
        var drainedTotal = 0
        /// Messages written with a `since` instant, oldest first: where each ends, and since when it waited.
        var deliveryMarks: [(end: Int, since: ContinuousClock.Instant)] = []

        mutating func markDelivery(since: ContinuousClock.Instant) {
            deliveryMarks.append((drainedTotal + buffer.count - readIndex, since))
        }
    }

    enum Framing {
        /// gRPC / Connect: every write is one enveloped message.
        case envelope
        /// Plain HTTP: writes are body bytes as they are.
        case raw
    }

    let capacity: Int
    let framing: Framing
    private let state = LockedValue(State())
    private let wakeLoop: @Sendable () -> Void
    private let endStreamEnvelope: (@Sendable (StatusCode, String) -> [UInt8])?
    private let messageDelivered: (@Sendable (Duration) -> Void)?

    /// - Parameters:
    ///   - wakeLoop: asks the owning loop to look at this stream again (resume its data).
    ///   - endStreamEnvelope: for Connect, the final envelope to queue when the call ends.
    ///   - messageDelivered: told, for each message written with a `since` instant, how long after it the
    ///     message's last byte was handed to the connection (see `HTTP2ServerConfiguration.messageDelivered`).
    init(
        capacity: Int,
        framing: Framing = .envelope,
        endStreamEnvelope: (@Sendable (StatusCode, String) -> [UInt8])?,
        messageDelivered: (@Sendable (Duration) -> Void)? = nil,
        wakeLoop: @escaping @Sendable () -> Void
    ) {
        self.capacity = capacity
        self.framing = framing
        self.endStreamEnvelope = endStreamEnvelope
        self.messageDelivered = messageDelivered
        self.wakeLoop = wakeLoop
    }

    // MARK: Producer side (handler, any thread)

    func write(_ payload: some Collection<UInt8>, since: ContinuousClock.Instant? = nil) async throws {
        let (mustWait, wake) = try state.withLock { state in
            if let reason = state.closedReason { throw reason }
            guard state.status == nil else {
                throw RPCError(.internal, "a message was written after the call ended")
            }
            guard framing == .envelope || state.head != nil else {
                throw RPCError(.internal, "an HTTP handler wrote body bytes before its status and headers")
            }
            switch framing {
            case .envelope: EnvelopeEncoder.append(payload, to: &state.buffer)
            case .raw: state.buffer.append(contentsOf: payload)
            }
            if let since, messageDelivered != nil { state.markDelivery(since: since) }
            return (state.buffer.count - state.readIndex > capacity, Self.claimWakeup(&state))
        }
        if wake { wakeLoop() }
        if mustWait { try await waitForRoom() }
    }

    /// Queues `payload` only if that needs no waiting: the call is open and the queue has room for it
    /// (or is empty). Returns false otherwise, queueing nothing; `write` then tells why, or waits.
    func tryWrite(_ payload: some Collection<UInt8>, since: ContinuousClock.Instant? = nil) -> Bool {
        let (accepted, wake) = state.withLock { state -> (Bool, Bool) in
            let queued = state.buffer.count - state.readIndex
            guard state.closedReason == nil, state.status == nil, framing == .envelope || state.head != nil,
                queued == 0 || queued + payload.count <= capacity
            else { return (false, false) }
            switch framing {
            case .envelope: EnvelopeEncoder.append(payload, to: &state.buffer)
            case .raw: state.buffer.append(contentsOf: payload)
            }
            if let since, messageDelivered != nil { state.markDelivery(since: since) }
            return (true, Self.claimWakeup(&state))
        }
        if wake { wakeLoop() }
        return accepted
    }

    private func waitForRoom() async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let resumeNow: Result<Void, any Error>? = state.withLock { state in
                    if let reason = state.closedReason { return .failure(reason) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if state.buffer.count - state.readIndex <= capacity / 2 { return .success(()) }
                    state.producerWaiting = continuation
                    return nil
                }
                if let resumeNow { continuation.resume(with: resumeNow) }
            }
        } onCancel: {
            let waiter = state.withLock { state in
                defer { state.producerWaiting = nil }
                return state.producerWaiting
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    /// Ends the call with `code`. Queued messages are still delivered, then the status.
    /// Returns false if the call had already ended.
    @discardableResult
    func finish(_ code: StatusCode, _ message: String) -> Bool {
        let (accepted, wake) = state.withLock { state -> (Bool, Bool) in
            guard state.status == nil, state.closedReason == nil else { return (false, false) }
            state.status = (code, message)
            if let endStreamEnvelope {
                state.buffer.append(contentsOf: endStreamEnvelope(code, message))
            }
            return (true, Self.claimWakeup(&state))
        }
        if wake { wakeLoop() }
        return accepted
    }

    /// How the client left before the call ended, if it did.
    var disconnect: RPCDisconnect? { state.withLock { $0.disconnect } }

    /// Plain HTTP: the response status and headers. Only the first call counts.
    func setHead(_ headers: [(String, String)]) throws {
        let wake = try state.withLock { state in
            if let reason = state.closedReason { throw reason }
            guard state.head == nil else { throw RPCError(.internal, "an HTTP handler sent its response head twice") }
            state.head = headers
            return Self.claimWakeup(&state)
        }
        if wake { wakeLoop() }
    }

    var head: [(String, String)]? { state.withLock { $0.head } }

    /// Under the lock that queued something: true when the loop must be woken, that is when it
    /// was idle; it is no longer, so a burst of writes wakes it once.
    private static func claimWakeup(_ state: inout State) -> Bool {
        defer { state.loopIdle = false }
        return state.loopIdle
    }

    // MARK: Consumer side (loop thread)

    /// Ends the call at once with `code`, dropping what is still queued (deadline, shutdown).
    /// Returns false if the call had already ended.
    func abort(_ code: StatusCode, _ message: String) -> Bool {
        let (accepted, waiter) = state.withLock { state -> (Bool, CheckedContinuation<Void, any Error>?) in
            guard state.status == nil, state.closedReason == nil else { return (false, nil) }
            state.buffer.removeAll()
            state.readIndex = 0
            state.deliveryMarks.removeAll()
            state.status = (code, message)
            if let endStreamEnvelope {
                state.buffer.append(contentsOf: endStreamEnvelope(code, message))
            }
            state.closedReason = RPCError(code, message)
            defer { state.producerWaiting = nil }
            return (true, state.producerWaiting)
        }
        waiter?.resume(throwing: RPCError(code, message))
        return accepted
    }

    /// The stream is gone (reset by the client, connection closed): fail the producer.
    func close(_ reason: RPCError, disconnect: RPCDisconnect) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, any Error>? in
            if state.closedReason == nil { state.closedReason = reason }
            if state.status == nil { state.disconnect = disconnect }
            state.buffer = []
            state.readIndex = 0
            state.deliveryMarks.removeAll()
            defer { state.producerWaiting = nil }
            return state.producerWaiting
        }
        waiter?.resume(throwing: reason)
    }

    /// What the loop should do before any DATA: nil while nothing is known yet,
    /// otherwise whether the response is a bare status (gRPC trailers-only) or has a body.
    func responseShape(trailersOnlyAllowed: Bool) -> (trailersOnly: Bool, status: (code: StatusCode, message: String)?)? {
        state.withLock { state in
            let queued = state.buffer.count - state.readIndex
            if let status = state.status, queued == 0, trailersOnlyAllowed {
                return (true, status)
            }
            if queued > 0 || state.status != nil || state.head != nil { return (false, nil) }
            state.loopIdle = true
            return nil
        }
    }

    /// Copies up to `into.count` queued bytes. When nothing is queued and the call is still
    /// running, marks the loop idle (the data provider then defers until woken).
    func drain(into destination: UnsafeMutableRawBufferPointer) -> Drained {
        var delivered: [ContinuousClock.Instant] = []
        let (drained, waiter) = state.withLock { state -> (Drained, CheckedContinuation<Void, any Error>?) in
            let queued = state.buffer.count - state.readIndex
            let count = min(queued, destination.count)
            state.drainedTotal += count
            let passed = state.deliveryMarks.firstIndex { $0.end > state.drainedTotal } ?? state.deliveryMarks.count
            if passed > 0 {
                delivered = state.deliveryMarks[..<passed].map(\.since)
                state.deliveryMarks.removeFirst(passed)
            }
            if count > 0 {
                state.buffer.withUnsafeBytes { source in
                    destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[state.readIndex..<state.readIndex + count]))
                }
                state.readIndex += count
                if state.readIndex == state.buffer.count {
                    state.buffer.removeAll(keepingCapacity: state.buffer.capacity <= 4 * capacity)
                    state.readIndex = 0
                } else if state.readIndex > capacity {
                    state.buffer.removeFirst(state.readIndex)
                    state.readIndex = 0
                }
            }
            let remaining = state.buffer.count - state.readIndex
            var waiter: CheckedContinuation<Void, any Error>?
            if remaining <= capacity / 2 {
                waiter = state.producerWaiting
                state.producerWaiting = nil
            }
            let end = remaining == 0 && state.status != nil
            if remaining == 0 && state.status == nil { state.loopIdle = true }
            return (Drained(byteCount: count, endOfStream: end, status: end ? state.status : nil), waiter)
        }
        waiter?.resume()
        if let messageDelivered, !delivered.isEmpty {
            let now = ContinuousClock.now
            for since in delivered { messageDelivered(now - since) }
        }
        return drained
    }
}
