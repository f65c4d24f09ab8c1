import SluiceUpstream
import SluiceWire

/// One stream's upstream attempts: translates Anthropic events into Sluice events and retries
/// interrupted attempts so the client sees each piece of text exactly once.
struct StreamAttempts {
    let engine: StreamEngine
    let request: SendMessageRequest
    let channel: StreamChannel
    let startedAt: ContinuousClock.Instant

    /// The message id shown to the client: the first attempt's, kept across retries.
    private var messageID: String?
    /// Text of the current message already sent to the client (the prefill of a continuation).
    private var sentText = ""
    /// A tool_use or thinking block began: such blocks cannot be continued by prefill.
    private var sawNonTextBlock = false
    private var stopReason: String?
    private var sawFirstToken = false
    private var inputTokens = 0
    private var outputTokens = 0

    init(engine: StreamEngine, request: SendMessageRequest, channel: StreamChannel, startedAt: ContinuousClock.Instant) {
        self.engine = engine
        self.request = request
        self.channel = channel
        self.startedAt = startedAt
    }

    /// Returns the number of retries it took.
    mutating func run() async throws -> Int {
        let policy = engine.configuration.retry
        var retries = 0
        var prefill: String?
        while true {
            do {
                try await attempt(prefill: prefill)
                channel.emit(.streamComplete(usage: ["input_tokens": .number(Double(inputTokens)), "output_tokens": .number(Double(outputTokens))]))
                return retries
            } catch {
                if Task.isCancelled || error.kind == .cancelled { throw CancellationError() }
                let prefillRefused = prefill != nil && error.kind == .httpStatus && error.httpStatus == 400
                guard error.retryable || prefillRefused, retries < policy.maxRetries else {
                    throw Self.finalError(error, attempts: retries + 1)
                }
                retries += 1
                let mode: RetryMode =
                    if sentText.isEmpty && !sawNonTextBlock { .transparent }
                    else if sawNonTextBlock || prefillRefused { .restart }
                    else { .continue }
                let delay = policy.delay(attempt: retries, retryAfter: error.retryAfter, unitRandom: Double.random(in: 0..<1))
                let reason = Self.reason(error)
                engine.metrics.retried(reason: error.kind.rawValue)
                channel.emit(.upstreamRetry(attempt: retries, reason: reason, delayMilliseconds: Int(delay.milliseconds), mode: mode))
                if mode == .restart, let messageID {
                    channel.emit(.messageRestart(id: messageID, reason: reason))
                    sentText = ""
                    sawNonTextBlock = false
                }
                try await Task.sleep(for: delay)
                prefill = mode == .continue ? sentText : nil
            }
        }
    }

    /// One upstream request; returns after `message_stop`.
    private mutating func attempt(prefill: String?) async throws(UpstreamFailure) {
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
        let events = engine.upstream.streamMessage(body: request.upstreamBody(prefill: prefillSent), headers: headers)
        var attemptOutputTokens = 0
        do {
            for try await event in events {
                switch event {
                case .messageStart(let id, let model, let role, let usage):
                    inputTokens += usage.inputTokens ?? 0
                    attemptOutputTokens = usage.outputTokens ?? 0
                    if messageID == nil {
                        messageID = id
                        channel.emit(.messageStart(id: id, role: role, model: model))
                    }
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
                    guard !delta.isEmpty, let messageID else { continue }
                    if sentText.isEmpty && !sawFirstToken {
                        sawFirstToken = true
                        engine.metrics.timeToFirstToken(.now - startedAt)
                    }
                    sentText += delta
                    channel.emit(.messageDelta(id: messageID, delta: String(delta)))
                case .messageDelta(let stop, _, let usage):
                    stopReason = stop ?? stopReason
                    attemptOutputTokens = usage.outputTokens ?? attemptOutputTokens
                case .messageStop:
                    outputTokens += attemptOutputTokens
                    if let messageID { channel.emit(.messageStop(id: messageID, stopReason: stopReason)) }
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

    private static func reason(_ failure: UpstreamFailure) -> String {
        var reason = failure.kind.rawValue
        if let status = failure.httpStatus { reason += " \(status)" }
        if let type = failure.errorType { reason += " \(type)" }
        return reason
    }

    /// The status a client sees when the upstream failed for good.
    static func finalError(_ failure: UpstreamFailure, attempts: Int) -> RPCError {
        let code: StatusCode =
            switch (failure.kind, failure.httpStatus) {
            case (.httpStatus, 429?): .resourceExhausted
            case (.httpStatus, 400?), (.httpStatus, 413?): .invalidArgument
            case (.httpStatus, 401?): .internal
            case (.httpStatus, 403?): .permissionDenied
            case (.httpStatus, 404?): .notFound
            case (.invalidResponse, _): .internal
            default: .unavailable
            }
        var message = "the upstream failed"
        message += attempts > 1 ? " after \(attempts) attempts: " : ": "
        message += failure.message
        if let requestID = failure.requestID { message += " (upstream request-id \(requestID))" }
        return RPCError(code, message)
    }
}

extension String {
    var trimmingTrailingWhitespace: Substring {
        var end = endIndex
        while end > startIndex, self[index(before: end)].isWhitespace { end = index(before: end) }
        return self[..<end]
    }
}
