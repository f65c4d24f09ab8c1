import SluiceIO
import SluiceWire

/// The bounded queue between a handler (any thread) and its HTTP/2 stream (loop thread).
///
/// The handler appends whole envelopes; the loop's data provider drains bytes, coalescing
/// whatever is queued into as few DATA frames as nghttp2 allows. When more than
/// `capacity` bytes wait, the handler suspends until the loop has drained below half of it,
/// so a client that stops reading costs at most `capacity` bytes per stream.
///
/// A `HandOff` whose load is the queued bytes, whose producer is the handler's task and whose consumer is
/// the loop: idle until notified (`wakeLoop`), so a burst of writes wakes it once.
final class StreamOutbound: Sendable {
    struct Drained {
        var byteCount: Int
        var endOfStream: Bool
        var status: (code: StatusCode, message: String)?
    }

    private struct Queue: Sendable {
        /// Queued bytes from `readIndex` on; how many is the hand-off's load.
        var bytes: [UInt8] = []
        var readIndex = 0
        /// Set when the handler is done (or the call was ended for it); nothing more is queued after.
        var status: (code: StatusCode, message: String)?
        /// Set by the loop when the stream is gone: writes fail from then on.
        var closedReason: RPCError?
        var disconnect: RPCDisconnect?
        /// Plain HTTP responses: status and headers, set by the handler before its body.
        var head: [(String, String)]?
        /// Bytes drained since the call began: with what is queued, the stream offset a queued message ends at.
        var drainedTotal = 0
        /// Messages written with a `since` instant, oldest first: where each ends, and since when it waited.
        var deliveryMarks: [(end: Int, since: ContinuousClock.Instant)] = []

        mutating func markDelivery(since: ContinuousClock.Instant) {
            deliveryMarks.append((drainedTotal + bytes.count - readIndex, since))
        }

        /// Drops everything queued.
        mutating func discard() {
            bytes = []
            readIndex = 0
            deliveryMarks.removeAll()
        }
    }

    enum Framing {
        /// gRPC / Connect: every write is one enveloped message.
        case envelope
        /// Plain HTTP: writes are body bytes as they are.
        case raw
        /// gRPC-Web text: every write is one enveloped message, base64-encoded with its padding (the protocol
        /// lets a server flush each message atomically as a padded chunk).
        case base64Envelope
    }

    let capacity: Int
    let framing: Framing
    /// What messages of at least `compressMinBytes` are compressed with (the client accepts it).
    let responseEncoding: MessageEncoding
    let compressMinBytes: Int
    private let handOff: HandOff<Queue>
    private let endStreamEnvelope: (@Sendable (StatusCode, String) -> [UInt8])?
    private let messageDelivered: (@Sendable (Duration) -> Void)?

    /// - Parameters:
    ///   - wakeLoop: asks the owning loop to look at this stream again (resume its data).
    ///   - endStreamEnvelope: for Connect, the final envelope to queue when the call ends.
    ///   - responseEncoding, compressMinBytes: envelopes only; messages this long or longer are compressed
    ///     (before locking), when that makes them smaller.
    ///   - messageDelivered: told, for each message written with a `since` instant, how long after it the
    ///     message's last byte was handed to the connection (see `HTTP2ServerConfiguration.messageDelivered`).
    init(
        capacity: Int,
        framing: Framing = .envelope,
        endStreamEnvelope: (@Sendable (StatusCode, String) -> [UInt8])?,
        responseEncoding: MessageEncoding = .identity,
        compressMinBytes: Int = .max,
        messageDelivered: (@Sendable (Duration) -> Void)? = nil,
        wakeLoop: @escaping @Sendable () -> Void
    ) {
        self.capacity = capacity
        self.framing = framing
        self.responseEncoding = responseEncoding
        self.compressMinBytes = compressMinBytes
        self.endStreamEnvelope = endStreamEnvelope
        self.messageDelivered = messageDelivered
        // The loop is not going to look at this queue until woken by the first activity.
        handOff = HandOff(
            Queue(), machine: HandOffStateMachine(capacity: capacity, producerResumesAt: capacity / 2, consumerStartsIdle: true),
            notifyConsumer: wakeLoop
        )
    }

    // MARK: Producer side (handler, any thread)

    func write(_ payload: some Collection<UInt8>, since: ContinuousClock.Instant? = nil) async throws {
        // The framing and queueing are synchronous so that their generic temporaries live on the thread's stack,
        // not in task-allocated async frames: only waiting for room suspends.
        if try enqueue(payload, since: since) { try await handOff.waitAsProducer(unlessLoadAtMost: capacity / 2) }
    }

    /// Frames and queues `payload`, or throws why the call takes no more messages. True when the producer must
    /// wait for room.
    private func enqueue(_ payload: some Collection<UInt8>, since: ContinuousClock.Instant?) throws -> Bool {
        if framing == .base64Envelope {
            // Encoded before locking, like compression.
            return try enqueue(Base64.encode(EnvelopeEncoder.encode(payload)), flags: [], as: .raw, since: since)
        } else if let compressed = compressed(payload) {
            return try enqueue(compressed, flags: .compressed, as: framing, since: since)
        } else {
            return try enqueue(payload, flags: [], as: framing, since: since)
        }
    }

    /// The payload compressed, when the client accepts compression and it is worth it; nil to send it as is.
    private func compressed(_ payload: some Collection<UInt8>) -> [UInt8]? {
        guard framing == .envelope else { return nil }
        return responseEncoding.compressed(payload, minBytes: compressMinBytes)
    }

    private func enqueue(
        _ payload: some Collection<UInt8>, flags: EnvelopeFlags, as framing: Framing, since: ContinuousClock.Instant?
    ) throws -> Bool {
        try handOff.withLock { state, wakeups throws(RPCError) -> Bool in
            if let reason = state.buffer.closedReason { throw reason }
            guard state.buffer.status == nil else {
                throw RPCError(.internal, "a message was written after the call ended")
            }
            guard self.framing != .raw || state.buffer.head != nil else {
                throw RPCError(.internal, "an HTTP handler wrote body bytes before its status and headers")
            }
            return Self.enqueue(payload, flags: flags, since: since, framing: framing, measured: messageDelivered != nil, &state, &wakeups)
        }
    }

    /// Queues `payload` only if that needs no waiting: the call is open and the queue has room for it
    /// (or is empty). Returns false otherwise, queueing nothing; `write` then tells why, or waits.
    func tryWrite(_ payload: some Collection<UInt8>, since: ContinuousClock.Instant? = nil) -> Bool {
        if framing == .base64Envelope {
            tryWrite(Base64.encode(EnvelopeEncoder.encode(payload)), flags: [], as: .raw, since: since)
        } else if let compressed = compressed(payload) {
            tryWrite(compressed, flags: .compressed, as: framing, since: since)
        } else {
            tryWrite(payload, flags: [], as: framing, since: since)
        }
    }

    private func tryWrite(
        _ payload: some Collection<UInt8>, flags: EnvelopeFlags, as framing: Framing, since: ContinuousClock.Instant?
    ) -> Bool {
        handOff.withLock { state, wakeups in
            let queued = state.machine.load
            guard state.buffer.closedReason == nil, state.buffer.status == nil, self.framing != .raw || state.buffer.head != nil,
                queued == 0 || queued + payload.count <= capacity
            else { return false }
            _ = Self.enqueue(payload, flags: flags, since: since, framing: framing, measured: messageDelivered != nil, &state, &wakeups)
            return true
        }
    }

    /// Under the lock: appends `payload` and wakes the loop if idle. True when the queue is now over capacity.
    private static func enqueue(
        _ payload: some Collection<UInt8>, flags: EnvelopeFlags, since: ContinuousClock.Instant?, framing: Framing, measured: Bool,
        _ state: inout HandOff<Queue>.State, _ wakeups: inout HandOffWakeups
    ) -> Bool {
        let before = state.buffer.bytes.count
        switch framing {
        case .envelope: EnvelopeEncoder.append(payload, flags: flags, to: &state.buffer.bytes)
        case .raw, .base64Envelope: state.buffer.bytes.append(contentsOf: payload)
        }
        if let since, measured { state.buffer.markDelivery(since: since) }
        let overCapacity = state.machine.add(state.buffer.bytes.count - before)
        wakeups.merge(state.machine.wakeConsumer())
        return overCapacity
    }

    /// Ends the call with `code`. Queued messages are still delivered, then the status.
    /// Returns false if the call had already ended.
    @discardableResult
    func finish(_ code: StatusCode, _ message: String) -> Bool {
        // Encoded before locking: the lock runs no caller-supplied closure.
        let envelope = endStreamEnvelope?(code, message)
        return handOff.withLock { state, wakeups in
            guard state.buffer.status == nil, state.buffer.closedReason == nil else { return false }
            state.buffer.status = (code, message)
            if let envelope {
                state.buffer.bytes.append(contentsOf: envelope)
                _ = state.machine.add(envelope.count)
            }
            if let finished = state.machine.finish() { wakeups.merge(finished) }
            return true
        }
    }

    /// How the client left before the call ended, if it did.
    var disconnect: RPCDisconnect? { handOff.withLock { state, _ in state.buffer.disconnect } }

    /// Plain HTTP: the response status and headers. Only the first call counts.
    func setHead(_ headers: [(String, String)]) throws {
        try handOff.withLock { state, wakeups throws(RPCError) in
            if let reason = state.buffer.closedReason { throw reason }
            guard state.buffer.head == nil else { throw RPCError(.internal, "an HTTP handler sent its response head twice") }
            state.buffer.head = headers
            wakeups.merge(state.machine.wakeConsumer())
        }
    }

    var head: [(String, String)]? { handOff.withLock { state, _ in state.buffer.head } }

    // MARK: Consumer side (loop thread)

    /// Ends the call at once with `code`, dropping what is still queued (deadline, shutdown).
    /// Returns false if the call had already ended.
    func abort(_ code: StatusCode, _ message: String) -> Bool {
        let envelope = endStreamEnvelope?(code, message)
        return handOff.withLock { state, wakeups in
            guard state.buffer.status == nil, state.buffer.closedReason == nil else { return false }
            let reason = RPCError(code, message)
            state.buffer.closedReason = reason
            // Closed first, so a waiting writer fails instead of being let go by the emptied queue.
            if let closed = state.machine.close(failingProducerWith: .failure(reason)) { wakeups.merge(closed) }
            state.buffer.discard()
            state.buffer.status = (code, message)
            if let envelope { state.buffer.bytes.append(contentsOf: envelope) }
            wakeups.merge(state.machine.setLoad(state.buffer.bytes.count))
            return true
        }
    }

    /// The stream is gone (reset by the client, connection closed): fail the producer.
    func close(_ reason: RPCError, disconnect: RPCDisconnect) {
        handOff.withLock { state, wakeups in
            if state.buffer.closedReason == nil { state.buffer.closedReason = reason }
            if state.buffer.status == nil { state.buffer.disconnect = disconnect }
            if let closed = state.machine.close(failingProducerWith: .failure(reason)) { wakeups.merge(closed) }
            state.buffer.discard()
            wakeups.merge(state.machine.setLoad(0))
        }
    }

    /// What the loop should do before any DATA: nil while nothing is known yet,
    /// otherwise whether the response is a bare status (gRPC trailers-only) or has a body.
    func responseShape(trailersOnlyAllowed: Bool) -> (trailersOnly: Bool, status: (code: StatusCode, message: String)?)? {
        handOff.withLock { state, _ in
            let queued = state.machine.load
            if let status = state.buffer.status, queued == 0, trailersOnlyAllowed {
                return (true, status)
            }
            if queued > 0 || state.buffer.status != nil || state.buffer.head != nil { return (false, nil) }
            state.machine.consumerIdle()
            return nil
        }
    }

    /// Copies up to `into.count` queued bytes. When nothing is queued and the call is still
    /// running, marks the loop idle (the data provider then defers until woken).
    func drain(into destination: UnsafeMutableRawBufferPointer) -> Drained {
        // Usually one message ends per drain: its instant is kept without an array (a drain per event).
        var firstDelivered: ContinuousClock.Instant?
        var moreDelivered: [ContinuousClock.Instant] = []
        let drained = handOff.withLock { state, wakeups in
            let count = min(state.machine.load, destination.count)
            state.buffer.drainedTotal += count
            let drainedTotal = state.buffer.drainedTotal
            let passed = state.buffer.deliveryMarks.firstIndex { $0.end > drainedTotal } ?? state.buffer.deliveryMarks.count
            if passed > 0 {
                firstDelivered = state.buffer.deliveryMarks[0].since
                if passed > 1 { moreDelivered = state.buffer.deliveryMarks[1..<passed].map(\.since) }
                state.buffer.deliveryMarks.removeFirst(passed)
            }
            if count > 0 {
                let readIndex = state.buffer.readIndex
                state.buffer.bytes.withUnsafeBytes { source in
                    destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[readIndex..<readIndex + count]))
                }
                state.buffer.readIndex += count
                if state.buffer.readIndex == state.buffer.bytes.count {
                    state.buffer.bytes.removeAll(keepingCapacity: state.buffer.bytes.capacity <= 4 * capacity)
                    state.buffer.readIndex = 0
                } else if state.buffer.readIndex > capacity {
                    state.buffer.bytes.removeFirst(state.buffer.readIndex)
                    state.buffer.readIndex = 0
                }
                wakeups.merge(state.machine.remove(count))
            }
            let remaining = state.machine.load
            let end = remaining == 0 && state.buffer.status != nil
            if remaining == 0 && state.buffer.status == nil { state.machine.consumerIdle() }
            return Drained(byteCount: count, endOfStream: end, status: end ? state.buffer.status : nil)
        }
        if let messageDelivered, let firstDelivered {
            let now = ContinuousClock.now
            messageDelivered(now - firstDelivered)
            for since in moreDelivered { messageDelivered(now - since) }
        }
        return drained
    }
}
