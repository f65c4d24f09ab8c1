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
    let trace: StreamTrace
    /// The front end the stream came through, for the metrics.
    let route: StreamRoute

    /// The id of the current turn's message, Sluice's own: `message_start` goes out before the
    /// upstream answers, so retries before its first byte are visible in order, and the id stays
    /// the same across every attempt of the turn.
    private var messageID = ""
    /// Text of the current message already sent to the client (the prefill of a continuation).
    private var sentText = ""
    /// A block other than text began (thinking, a tool call, a server tool's block): a prefill cannot end
    /// inside or after one, so an interruption restarts the message.
    private var sawNonTextBlock = false
    private var stopReason: String?
    private var stopSequence: String?
    private var sawFirstToken = false
    /// The `upstream_retry` reason when the stream continues another replica's (`StreamTakeover.reason`).
    private var takeoverReason = StreamTakeover.replicaLost
    /// The tool calls of the turn that just completed.
    private var pendingToolUses: [ToolUse] = []
    /// The turn's assistant content as the API's non-streaming response would give it: the last attempt's
    /// blocks with the text it continued from.
    private var turnMessage: AccumulatedMessage?
    /// Every usage field, summed over turns and attempts.
    private var usage = AnthropicUsage(inputTokens: 0, outputTokens: 0) {
        didSet {
            stats.set(\.inputTokens, to: usage.inputTokens ?? 0)
            stats.set(\.outputTokens, to: usage.outputTokens ?? 0)
        }
    }

    init(
        engine: StreamEngine, request: SendMessageRequest, channel: StreamChannel, startedAt: ContinuousClock.Instant, stats: StreamStats,
        trace: StreamTrace, route: StreamRoute
    ) {
        self.stats = stats
        self.trace = trace
        self.route = route
        self.engine = engine
        self.request = request
        self.channel = channel
        self.startedAt = startedAt
    }

    /// Runs turns until the model stops asking for Sluice's server tools. A turn that calls a client tool (one
    /// the request defines) ends the stream: the caller runs it and sends the result in a new request; Sluice
    /// never runs it. A tool the request names nowhere gets an error result the model sees, as before. A stream
    /// taken over from a lost replica continues from where its log ends, after the tool rounds rebuilt from it.
    mutating func run(takeover: StreamTakeover? = nil) async throws {
        var conversation = request.messages + (takeover?.conversation ?? [])
        var retries = takeover?.retries ?? 0
        var resuming: (messageID: String, sentText: String, sawNonTextBlock: Bool)?
        takeoverReason = takeover?.reason ?? StreamTakeover.replicaLost
        switch takeover?.next {
        case .continueTurn(let messageID, let sentText, let sawNonTextBlock): resuming = (messageID, sentText, sawNonTextBlock)
        case .ended:
            preconditionFailure("StreamEngine.takeOver finishes a stream whose log holds its end without running it")
        case .complete:
            channel.emit(.streamComplete(usage: usage.jsonValue, message: nil))
            return
        case .unsupported(let why): throw RPCError(.unavailable, "the replica running this stream was lost, and \(why)")
        case .startTurn, nil: break
        }
        for turn in (1 + (takeover?.finishedTurns ?? 0))... {
            try await runTurn(conversation: conversation, retries: &retries, resuming: resuming)
            resuming = nil
            let callsClientTools = pendingToolUses.contains { request.clientToolNames.contains($0.name) }
            guard stopReason == "tool_use", !pendingToolUses.isEmpty, !callsClientTools else { break }
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
            // The whole assistant turn goes back, thinking blocks with their signatures included, as the API requires
            // (less empty text blocks, which it refuses).
            let content = (turnMessage?.content ?? []).filter { if case .text("", _) = $0 { false } else { true } }
            conversation.append(["role": "assistant", "content": .array(content.map(\.jsonValue))])
            conversation.append(["role": "user", "content": .array(results)])
        }
        channel.emit(.streamComplete(usage: usage.jsonValue, message: request.includeMessage ? turnMessage?.jsonValue : nil))
    }

    /// One model turn, retried until it completes or the retry budget is spent.
    private mutating func runTurn(
        conversation: [JSONValue], retries: inout Int, resuming: (messageID: String, sentText: String, sawNonTextBlock: Bool)? = nil
    ) async throws {
        let policy = engine.configuration.retry
        stopReason = nil
        stopSequence = nil
        pendingToolUses = []
        turnMessage = nil
        var prefill: String?
        if let resuming {
            // The message the lost replica was sending: retried by the same rules as any interrupted attempt.
            messageID = resuming.messageID
            sentText = resuming.sentText
            sawNonTextBlock = resuming.sawNonTextBlock
            retries += 1
            stats.set(\.retries, to: retries)
            let mode = Self.retryMode(
                nothingSent: sentText.isEmpty && !sawNonTextBlock, mustRestart: sawNonTextBlock || request.thinkingEnabled)
            engine.metrics.retried(reason: takeoverReason, route: route)
            channel.emit(.upstreamRetry(attempt: retries, reason: takeoverReason, delayMilliseconds: 0, mode: mode))
            if mode == .restart {
                channel.emit(.messageRestart(id: messageID, reason: takeoverReason))
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
                let mode = Self.retryMode(
                    nothingSent: sentText.isEmpty && !sawNonTextBlock,
                    mustRestart: sawNonTextBlock || prefillRefused || request.thinkingEnabled)
                let delay = policy.delay(attempt: retries, retryAfter: error.retryAfter, unitRandom: Double.random(in: 0..<1))
                let reason = Self.reason(error)
                engine.metrics.retried(reason: error.kind.rawValue, route: route)
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

    /// How a retry goes on: a prefill continues plain text only; with thinking enabled the API accepts no
    /// assistant prefill at all, and a prefill cannot end inside (or after) a thinking or tool block.
    static func retryMode(nothingSent: Bool, mustRestart: Bool) -> RetryMode {
        if nothingSent { return .transparent }
        return mustRestart ? .restart : .continue
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
        var headers = request.upstreamHeaders + trace.childHeaders()
        if let simulation = request.simulation { headers.append(("sluice-simulation", simulation.serializedString)) }
        let body = request.upstreamBody(
            conversation: conversation, prefill: prefillSent, serverTools: engine.toolDefinitions(request.tools))
        let events = engine.upstream.streamMessage(body: body, headers: headers)
        var accumulator = MessageAccumulator()
        // A continuation's blocks follow the prefilled text block; its own first text block extends that one.
        var indexOffset = 0
        // Every attempt's usage counts, a failed one's too (what it reported before failing).
        defer { usage.add(accumulator.usage) }
        for try await event in events {
            accumulator.apply(event)
            switch event {
            case .contentBlockStart(let index, let block):
                if index == 0, let prefillSent, !prefillSent.isEmpty, !block.isText { indexOffset = 1 }
                if !block.isText { sawNonTextBlock = true }
                if case .redactedThinking(let data) = block { channel.emit(.redactedThinking(id: messageID, data: data)) }
            case .contentBlockDelta(let index, let delta):
                // Only a tool call's fragments need their block (its name); text deltas skip the lookup.
                let block: AccumulatedMessage.Block? = if case .inputJSON = delta { accumulator.block(at: index) } else { nil }
                try await emit(delta, of: block, whitespaceToSkip: &whitespaceToSkip)
            case .contentBlockStop(let index):
                guard let block = accumulator.block(at: index) else { continue }
                try emitEnd(of: block, index: index + indexOffset)
            case .messageDelta(let stop, let sequence, _):
                stopReason = stop ?? stopReason
                stopSequence = sequence ?? stopSequence
            case .messageStop:
                var message = accumulator.message()
                if let prefillSent, !prefillSent.isEmpty { message.content = Self.prepending(prefillSent, to: message.content) }
                turnMessage = message
                pendingToolUses = message.content.compactMap { block in
                    guard case .toolUse(let id, let name, let input) = block else { return nil }
                    return ToolUse(id: id, name: name, input: input)
                }
                channel.emit(.messageStop(id: messageID, stopReason: stopReason, stopSequence: stopSequence))
                return
            default:
                continue
            }
        }
        throw UpstreamFailure(.streamEndedEarly, message: "the upstream stream ended before message_stop")
    }

    /// Sends what a delta adds to the client: text, thinking, a client tool call's input, a citation.
    private mutating func emit(
        _ delta: AnthropicDelta, of block: AccumulatedMessage.Block?, whitespaceToSkip: inout Substring
    ) async throws(UpstreamFailure) {
        switch (delta, block) {
        case (.text(let text), _):
            var delta = Substring(text)
            while let first = whitespaceToSkip.first, delta.first == first {
                whitespaceToSkip.removeFirst()
                delta.removeFirst()
            }
            whitespaceToSkip = ""
            guard !delta.isEmpty else { return }
            guard channel.mayEmit else {
                // Paused past the lease: another replica may continue the stream; this one stops at once.
                engine.localRecord(channel.streamID)?.cancel(
                    RPCError(.unavailable, "this replica stalled past its lease on stream \(channel.streamID); Resume it"))
                throw UpstreamFailure(.cancelled, message: "the replica stalled past its lease")
            }
            if sentText.isEmpty && !sawFirstToken {
                sawFirstToken = true
                engine.metrics.timeToFirstToken(.now - startedAt, route: route)
            }
            sentText += delta
            // The whole text unless a prefill's whitespace was cut off: then no copy.
            channel.emit(.messageDelta(id: messageID, delta: delta.startIndex == text.startIndex ? text : String(delta)))
            await channel.waitForReader()
        case (.thinking(let text), _):
            channel.emit(.thinkingDelta(id: messageID, delta: text))
            await channel.waitForReader()
        case (.inputJSON(let fragment), .toolUse(let toolUseID, let name, _)?) where request.clientToolNames.contains(name):
            channel.emit(.toolCallDelta(id: messageID, toolUseID: toolUseID, name: name, partialJSON: fragment))
            await channel.waitForReader()
        case (.citation(let citation), _):
            channel.emit(.citation(id: messageID, citation: citation))
        default:
            // Server tool inputs and deltas of types Sluice does not model arrive whole with their block.
            return
        }
    }

    /// Sends what a completed block adds: a thinking block's signature, a client tool call with its parsed
    /// input, or a block Sluice does not model, whole.
    private func emitEnd(of block: AccumulatedMessage.Block, index: Int) throws(UpstreamFailure) {
        switch block {
        case .thinking(_, let signature):
            channel.emit(.thinkingSignature(id: messageID, signature: signature))
        case .toolUse(let toolUseID, let name, let input) where request.clientToolNames.contains(name):
            switch input {
            case .parsed(let value):
                channel.emit(.toolCall(id: messageID, toolUseID: toolUseID, name: name, input: value))
            case .invalid(_, let error), .incomplete(let error):
                throw UpstreamFailure(
                    .invalidResponse, message: "the upstream sent tool call \(toolUseID) with input that is not JSON: \(error)")
            }
        case .other(let raw):
            channel.emit(.contentBlock(id: messageID, index: index, block: raw))
        case .text, .toolUse, .redactedThinking:
            return
        }
    }

    /// `content` after a continuation from `prefill`: the prefilled text starts the first text block.
    static func prepending(_ prefill: String, to content: [AccumulatedMessage.Block]) -> [AccumulatedMessage.Block] {
        var content = content
        if case .text(let text, let citations)? = content.first {
            content[0] = .text(prefill + text, citations: citations)
        } else {
            content.insert(.text(prefill, citations: []), at: 0)
        }
        return content
    }

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
