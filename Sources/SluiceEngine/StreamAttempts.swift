import SluiceIO
import SluiceUpstream
import SluiceWire

/// One stream's upstream attempts: translates Anthropic events into Sluice events and retries
/// interrupted attempts so the client sees each piece of text exactly once.
struct StreamAttempts {
    let engine: StreamEngine
    let request: SendMessageRequest
    let channel: StreamChannel
    let startedAt: ContinuousClock.Instant
    /// Retries and tokens, readable after the stream ends however it ended.
    let stats: StreamStats

    /// The id of the current turn's message, Sluice's own: `message_start` goes out before the
    /// upstream answers, so retries before its first byte are visible in order, and the id stays
    /// the same across every attempt of the turn.
    private var messageID = ""
    /// Text of the current message already sent to the client (the prefill of a continuation).
    private var sentText = ""
    /// A tool_use or thinking block began: such blocks cannot be continued by prefill.
    private var sawNonTextBlock = false
    private var stopReason: String?
    private var sawFirstToken = false
    /// The tool calls of the turn that just completed.
    private var pendingToolUses: [ToolUse] = []
    private var inputTokens = 0 {
        didSet { stats.set(\.inputTokens, to: inputTokens) }
    }
    private var outputTokens = 0 {
        didSet { stats.set(\.outputTokens, to: outputTokens) }
    }

    init(engine: StreamEngine, request: SendMessageRequest, channel: StreamChannel, startedAt: ContinuousClock.Instant, stats: StreamStats)
    {
        self.stats = stats
        self.engine = engine
        self.request = request
        self.channel = channel
        self.startedAt = startedAt
    }

    /// Runs turns until the model stops asking for tools; a stream taken over from a lost replica continues from
    /// where its log ends.
    mutating func run(takeover: StreamTakeover? = nil) async throws {
        var conversation = request.messages
        var retries = takeover?.retries ?? 0
        var resuming: (messageID: String, sentText: String, sawNonTextBlock: Bool)?
        switch takeover?.next {
        case .continueTurn(let messageID, let sentText, let sawNonTextBlock): resuming = (messageID, sentText, sawNonTextBlock)
        case .ended:
            preconditionFailure("StreamEngine.takeOver finishes a stream whose log holds its end without running it")
        case .complete:
            channel.emit(.streamComplete(usage: ["input_tokens": .integer(0), "output_tokens": .integer(0)]))
            return
        case .unsupported(let why): throw RPCError(.unavailable, "the replica running this stream was lost, and \(why)")
        case .startTurn, nil: break
        }
        for turn in 1... {
            try await runTurn(conversation: conversation, retries: &retries, resuming: resuming)
            resuming = nil
            guard stopReason == "tool_use", !pendingToolUses.isEmpty else { break }
            guard turn < engine.configuration.maxTurns else {
                throw RPCError(
                    .resourceExhausted,
                    "the model still asked for tools at the server's turn limit (\(engine.configuration.maxTurns) per stream); the stream stops here"
                )
            }
            let toolUses = pendingToolUses
            let results = await ToolRunner(engine: engine, channel: channel, allowed: request.tools).run(toolUses)
            // A stream cancelled while its tools ran must not start (and pay for) another turn.
            try Task.checkCancellation()
            var assistantContent: [JSONValue] = []
            if !sentText.isEmpty { assistantContent.append(["type": "text", "text": .string(sentText)]) }
            assistantContent += toolUses.map {
                ["type": "tool_use", "id": .string($0.id), "name": .string($0.name), "input": $0.inputJSON]
            }
            conversation.append(["role": "assistant", "content": .array(assistantContent)])
            conversation.append(["role": "user", "content": .array(results)])
        }
        channel.emit(.streamComplete(usage: ["input_tokens": .integer(inputTokens), "output_tokens": .integer(outputTokens)]))
    }

    /// One model turn, retried until it completes or the retry budget is spent.
    private mutating func runTurn(
        conversation: [JSONValue], retries: inout Int, resuming: (messageID: String, sentText: String, sawNonTextBlock: Bool)? = nil
    ) async throws {
        let policy = engine.configuration.retry
        stopReason = nil
        pendingToolUses = []
        var prefill: String?
        if let resuming {
            // The message the lost replica was sending: retried by the same rules as any interrupted attempt.
            messageID = resuming.messageID
            sentText = resuming.sentText
            sawNonTextBlock = resuming.sawNonTextBlock
            retries += 1
            stats.set(\.retries, to: retries)
            let mode: RetryMode = sawNonTextBlock ? .restart : sentText.isEmpty ? .transparent : .continue
            engine.metrics.retried(reason: Self.replicaLost)
            channel.emit(.upstreamRetry(attempt: retries, reason: Self.replicaLost, delayMilliseconds: 0, mode: mode))
            if mode == .restart {
                channel.emit(.messageRestart(id: messageID, reason: Self.replicaLost))
                sentText = ""
                sawNonTextBlock = false
            }
            prefill = mode == .continue ? sentText : nil
        } else {
            messageID = StreamEngine.makeID(prefix: "msg_")
            channel.emit(.messageStart(id: messageID, role: "assistant", model: request.model))
            sentText = ""
            sawNonTextBlock = false
        }
        while true {
            do {
                try await attempt(conversation: conversation, prefill: prefill)
                return
            } catch {
                if Task.isCancelled || error.kind == .cancelled { throw CancellationError() }
                let prefillRefused = prefill != nil && error.kind == .httpStatus && error.httpStatus == 400
                guard error.retryable || prefillRefused, retries < policy.maxRetries else {
                    throw Self.finalError(error, attempts: retries + 1)
                }
                retries += 1
                stats.set(\.retries, to: retries)
                let mode: RetryMode =
                    if sentText.isEmpty && !sawNonTextBlock { .transparent } else if sawNonTextBlock || prefillRefused { .restart } else {
                        .continue
                    }
                let delay = policy.delay(attempt: retries, retryAfter: error.retryAfter, unitRandom: Double.random(in: 0..<1))
                let reason = Self.reason(error)
                engine.metrics.retried(reason: error.kind.rawValue)
                channel.emit(.upstreamRetry(attempt: retries, reason: reason, delayMilliseconds: Int(delay.milliseconds), mode: mode))
                if mode == .restart {
                    channel.emit(.messageRestart(id: messageID, reason: reason))
                    sentText = ""
                    sawNonTextBlock = false
                }
                try await EventLoop.sleep(for: delay)
                prefill = mode == .continue ? sentText : nil
            }
        }
    }

    /// One upstream request; returns after `message_stop`.
    private mutating func attempt(conversation: [JSONValue], prefill: String?) async throws(UpstreamFailure) {
        // The API refuses a prefill ending in whitespace; the continuation repeats it, so skip it once.
        var prefillSent = prefill
        var whitespaceToSkip = Substring()
        if let prefill {
            let trimmed = prefill.trimmingTrailingWhitespace
            prefillSent = String(trimmed)
            whitespaceToSkip = prefill[trimmed.endIndex...]
        }
        var headers: [(String, String)] = []
        if let simulation = request.simulation { headers.append(("sluice-simulation", simulation.serializedString)) }
        let body = request.upstreamBody(conversation: conversation, prefill: prefillSent, tools: engine.toolDefinitions(request.tools))
        let events = engine.upstream.streamMessage(body: body, headers: headers)
        var attemptOutputTokens = 0
        var accumulator = MessageAccumulator()
        do throws(UpstreamFailure) {
            for try await event in events {
                accumulator.apply(event)
                switch event {
                case .messageStart(_, _, _, let usage):
                    inputTokens += usage.inputTokens ?? 0
                    attemptOutputTokens = usage.outputTokens ?? 0
                case .contentBlockStart(_, let block):
                    switch block {
                    case .toolUse, .thinking, .redactedThinking: sawNonTextBlock = true
                    default: break
                    }
                case .contentBlockDelta(_, .text(let text)):
                    var delta = Substring(text)
                    while let first = whitespaceToSkip.first, delta.first == first {
                        whitespaceToSkip.removeFirst()
                        delta.removeFirst()
                    }
                    whitespaceToSkip = ""
                    guard !delta.isEmpty else { continue }
                    guard channel.mayEmit else {
                        // Paused past the lease: another replica may continue the stream; this one stops at once.
                        engine.localRecord(channel.streamID)?.cancel(
                            RPCError(.unavailable, "this replica stalled past its lease on stream \(channel.streamID); Resume it"))
                        throw UpstreamFailure(.cancelled, message: "the replica stalled past its lease")
                    }
                    if sentText.isEmpty && !sawFirstToken {
                        sawFirstToken = true
                        engine.metrics.timeToFirstToken(.now - startedAt)
                    }
                    sentText += delta
                    channel.emit(.messageDelta(id: messageID, delta: String(delta)))
                    await channel.waitForReader()
                case .messageDelta(let stop, _, let usage):
                    stopReason = stop ?? stopReason
                    attemptOutputTokens = usage.outputTokens ?? attemptOutputTokens
                case .messageStop:
                    outputTokens += attemptOutputTokens
                    pendingToolUses = accumulator.message().content.compactMap { block in
                        guard case .toolUse(let id, let name, let input) = block else { return nil }
                        return ToolUse(id: id, name: name, input: input)
                    }
                    channel.emit(.messageStop(id: messageID, stopReason: stopReason))
                    return
                default:
                    continue
                }
            }
        } catch {
            outputTokens += attemptOutputTokens
            throw error
        }
        outputTokens += attemptOutputTokens
        throw UpstreamFailure(.streamEndedEarly, message: "the upstream stream ended before message_stop")
    }

    /// The retry reason of a stream taken over from a replica that died or lost its lease.
    static let replicaLost = "replica_lost"

    private static func reason(_ failure: UpstreamFailure) -> String {
        var reason = failure.kind.rawValue
        if let status = failure.httpStatus { reason += " \(status)" }
        if let type = failure.errorType { reason += " \(type)" }
        return reason
    }

    /// The status a client sees when the upstream failed for good (the mapping is `UpstreamFailure.grpcStatus`).
    static func finalError(_ failure: UpstreamFailure, attempts: Int) -> RPCError {
        var message = "the upstream failed"
        message += attempts > 1 ? " after \(attempts) attempts: " : ": "
        message += failure.message
        if let requestID = failure.requestID { message += " (upstream request-id \(requestID))" }
        return RPCError(failure.grpcStatus, message)
    }
}

extension String {
    var trimmingTrailingWhitespace: Substring {
        var end = endIndex
        while end > startIndex, self[index(before: end)].isWhitespace { end = index(before: end) }
        return self[..<end]
    }
}

/// What a stream cost, for its log line.
final class StreamStats: Sendable {
    struct Values {
        var retries = 0
        var inputTokens = 0
        var outputTokens = 0
    }

    private let values = LockedValue(Values())
    /// A field, not a closure: the lock runs no caller-supplied code.
    func set(_ field: WritableKeyPath<Values, Int>, to value: Int) { values.withLock { $0[keyPath: field] = value } }
    var current: Values { values.withLock { $0 } }
}
