import Glibc
import SluiceIO
import SluiceTransport
import SluiceWire
import Synchronization
import W3CTraceContext

/// A built-in simulator of the Anthropic Messages API (`POST /v1/messages`), streaming and not, for tests,
/// benchmarks and `sluice simulate`.
///
/// Responses are deterministic: the same conversation and scenario give the same bytes (ids included), and a
/// request ending with an assistant message that is a prefix of what the simulator would say gets exactly the
/// rest. The `sluice-simulation` request header (JSON, see `SimulationScenario` and
/// schema/simulation.schema.json) sets the seed, length, pacing, tool calls and faults: dropped connections,
/// stalls, `error` events and HTTP errors, optionally only for the first K attempts of the same scenario.
public final class AnthropicSimulator: Sendable {
    public static let messagesPath = "/v1/messages"
    public static let countTokensPath = "/v1/messages/count_tokens"
    /// `GET /v1/_simulator/traces/{trace_id}`: the last `traceparent` seen with that trace id, and how many requests.
    public static let tracesPrefix = "/v1/_simulator/traces/"

    private let active = Atomic<Int>(0)
    private let aborted = Atomic<Int>(0)
    private let requests = Atomic<Int>(0)
    private let requestIDs = Atomic<UInt64>(0)
    private let requestIDBase: UInt64
    private let attempts: LockedValue<AttemptTable>
    /// Prompt-cache prefixes seen so far (their first use writes the cache, later ones read it).
    private let cachedPrefixes: LockedValue<AttemptTable>
    private let traces = LockedValue(TraceTable(capacity: 10_000))

    public convenience init() {
        self.init(attemptCapacity: 10_000)
    }

    /// `attemptCapacity`: how many scenarios' attempt counters are kept (least recently used ones go first).
    public init(attemptCapacity: Int) {
        attempts = LockedValue(AttemptTable(capacity: max(1, attemptCapacity)))
        cachedPrefixes = LockedValue(AttemptTable(capacity: max(1, attemptCapacity)))
        // Request ids only need to be unique, not reproducible.
        var system = SystemRandomNumberGenerator()
        requestIDBase = system.next()
    }

    /// Requests being served right now (streams included until their handler has returned).
    public var activeStreams: Int { active.load(ordering: .acquiring) }

    /// Requests that ended because the client went away (reset, closed connection, cancellation).
    public var abortedStreams: Int { aborted.load(ordering: .acquiring) }

    /// Requests received so far.
    public var requestCount: Int { requests.load(ordering: .acquiring) }

    /// Forgets every scenario's attempt count, so `times` faults fire again, and the prompt cache.
    public func resetAttempts() {
        attempts.withLock { $0.removeAll() }
        cachedPrefixes.withLock { $0.removeAll() }
    }

    public func register(in router: inout RPCRouter) {
        router.registerHTTP(Self.messagesPath) { [self] request, writer in
            try await serve(request, writer)
        }
        router.registerHTTP(Self.countTokensPath) { [self] request, writer in
            try await countTokens(request, writer)
        }
        router.registerHTTP(prefix: Self.tracesPrefix) { [self] request, writer in
            let traceID = String(request.path.dropFirst(Self.tracesPrefix.count))
            guard let entry = lastTrace(traceID: traceID) else {
                try writer.head(status: 404, headers: [("content-type", "application/json")])
                let message = "no request with trace id '\(traceID)' reached the simulator"
                return try await writer.write(JSONValue.object(["error": .string(message)]).serialized())
            }
            try writer.head(status: 200, headers: [("content-type", "application/json")])
            let body: JSONValue = .object(["traceparent": .string(entry.traceparent), "requests": .number(JSONNumber(entry.requests))])
            try await writer.write(body.serialized())
        }
    }

    /// The last `traceparent` a request of this trace carried, and how many requests carried the trace.
    func lastTrace(traceID: String) -> TraceTable.Entry? {
        traces.withLock { $0.entry(traceID: traceID) }
    }

    /// Serves one request; usable directly from another HTTP handler.
    public func serve(_ request: HTTPRequest, _ writer: HTTPResponseWriter) async throws {
        requests.add(1, ordering: .relaxed)
        active.add(1, ordering: .acquiringAndReleasing)
        defer { active.subtract(1, ordering: .acquiringAndReleasing) }
        do {
            try await handle(request, writer)
        } catch let reset as HTTPStreamReset {
            throw reset  // a simulated drop, not the client's doing
        } catch {
            aborted.add(1, ordering: .acquiringAndReleasing)
            throw error
        }
    }

    // MARK: Handling

    private func handle(_ request: HTTPRequest, _ writer: HTTPResponseWriter) async throws {
        let requestID = SimulatorText.identifier(
            prefix: "req_", seed: SimulatorHash.combine(requestIDBase, requestIDs.add(1, ordering: .relaxed).newValue))
        guard request.method == "POST" else {
            let failure = SimulatorFailure(
                status: 405, type: "invalid_request_error", message: "Method \(request.method) not allowed: use POST")
            return try await respond(failure, requestID: requestID, writer)
        }
        if let traceparent = request.header("traceparent"),
            let context = try? TraceContext(traceParentHeaderValue: traceparent)
        {
            let traceID = "\(context.traceID)"
            traces.withLock { $0.record(traceID: traceID, traceparent: traceparent) }
        }
        let scenarioHeader = request.header(SimulationScenario.headerName)
        let scenario: SimulationScenario
        let messagesRequest: MessagesRequest
        do {
            scenario = try SimulationScenario(header: scenarioHeader)
            messagesRequest = try MessagesRequest.parse(request.body)
            try Self.checkPrefill(messagesRequest, policy: scenario.prefill)
        } catch let error as SimulationScenarioError {
            return try await respond(.invalidRequest(error.message), requestID: requestID, writer)
        } catch let failure as SimulatorFailure {
            return try await respond(failure, requestID: requestID, writer)
        }

        var fault = scenario.fault
        if let active = fault {
            // The key (a serialization of the conversation) is computed before locking: the lock is every request's.
            let key = Self.attemptKey(scenarioHeader ?? "", messagesRequest)
            let attempt = attempts.withLock { $0.next(key) }
            if let times = active.times, attempt > times { fault = nil }
        }
        if let fault, fault.kind == .httpStatus {
            return try await respond(Self.failure(for: fault), requestID: requestID, writer)
        }

        var cacheRead = false
        if let prefix = messagesRequest.cachedPrefix {
            let key = AttemptTable.Key(
                first: SimulatorHash.hash(prefix), second: SimulatorHash.hash(prefix, basis: 0x8422_2325_CBF2_9CE4), length: prefix.count)
            cacheRead = cachedPrefixes.withLock { $0.next(key) } > 1
        }
        let message = SimulatedMessage(request: messagesRequest, scenario: scenario, cacheRead: cacheRead)
        if messagesRequest.stream {
            try await stream(message, scenario: scenario, fault: fault, requestID: requestID, writer)
        } else {
            try await respondWhole(message, scenario: scenario, fault: fault, requestID: requestID, writer)
        }
    }

    /// `{"input_tokens": N}`: the `input_tokens` a message for the same body reports.
    private func countTokens(_ request: HTTPRequest, _ writer: HTTPResponseWriter) async throws {
        requests.add(1, ordering: .relaxed)
        let requestID = SimulatorText.identifier(
            prefix: "req_", seed: SimulatorHash.combine(requestIDBase, requestIDs.add(1, ordering: .relaxed).newValue))
        guard request.method == "POST" else {
            let failure = SimulatorFailure(
                status: 405, type: "invalid_request_error", message: "Method \(request.method) not allowed: use POST")
            return try await respond(failure, requestID: requestID, writer)
        }
        let messagesRequest: MessagesRequest
        do {
            messagesRequest = try MessagesRequest.parse(request.body, requiresMaxTokens: false)
        } catch {
            return try await respond(error, requestID: requestID, writer)
        }
        let body: OrderedJSON = ["input_tokens": .integer(SimulatedMessage.inputTokens(messagesRequest).uncached)]
        try writer.head(status: 200, headers: [("content-type", "application/json"), ("request-id", requestID)])
        try await writer.write(body.serialized())
    }

    private static func checkPrefill(_ request: MessagesRequest, policy: SimulationScenario.PrefillPolicy) throws(SimulatorFailure) {
        guard let prefill = request.prefill else { return }
        // As the API: with thinking enabled the last assistant message must start with a thinking block, which a
        // text prefill never does.
        if request.thinkingBudget != nil && !request.prefillStartsWithThinking {
            throw .invalidRequest(
                "messages.\(request.conversation.count).content.0.type: Expected `thinking` or `redacted_thinking`, but found `text`. When `thinking` is enabled, a final `assistant` message must start with a thinking block. We recommend you include thinking blocks from previous turns."
            )
        }
        switch policy {
        case .continue:
            break
        case .reject:
            throw .invalidRequest(
                "This model does not support assistant message prefill. The conversation must end with a user message.")
        case .rejectTrailingWhitespace:
            if let last = prefill.unicodeScalars.last, last.properties.isWhitespace {
                throw .invalidRequest("messages: final assistant content cannot end with trailing whitespace")
            }
        }
    }

    /// "The same scenario": the header, the model, the tools and the conversation without its prefill.
    private static func attemptKey(_ header: String, _ request: MessagesRequest) -> AttemptTable.Key {
        var bytes = Array(header.utf8)
        bytes.append(0)
        bytes += JSONValue.object([
            "model": .string(request.model), "system": request.system, "tools": .array(request.tools),
            "messages": .array(request.conversation),
        ]).serialized()
        return AttemptTable.Key(
            first: SimulatorHash.hash(bytes), second: SimulatorHash.hash(bytes, basis: 0x8422_2325_CBF2_9CE4), length: bytes.count)
    }

    private static func failure(for fault: SimulationScenario.Fault) -> SimulatorFailure {
        var failure = SimulatorFailure(
            status: fault.status,
            type: fault.errorType ?? SimulatorFailure.errorType(forStatus: fault.status),
            message: fault.message ?? SimulatorFailure.defaultMessage(forStatus: fault.status)
        )
        if let seconds = fault.retryAfterSeconds ?? (fault.status == 429 ? 1 : nil) {
            failure.headers.append(("retry-after", String(seconds)))
        }
        if let shouldRetry = fault.shouldRetry { failure.headers.append(("x-should-retry", shouldRetry ? "true" : "false")) }
        return failure
    }

    private func respond(_ failure: SimulatorFailure, requestID: String, _ writer: HTTPResponseWriter) async throws {
        let body: OrderedJSON = [
            "type": "error",
            "error": ["type": .string(failure.type), "message": .string(failure.message)],
            "request_id": .string(requestID),
        ]
        try writer.head(
            status: failure.status,
            headers: [("content-type", "application/json"), ("request-id", requestID)] + failure.headers)
        try await writer.write(body.serialized())
    }

    private func responseHeaders(_ message: SimulatedMessage, requestID: String, contentType: String) -> [(String, String)] {
        [("content-type", contentType), ("request-id", requestID), ("sluice-simulation-prefill", message.prefill.rawValue)]
    }

    private func respondWhole(
        _ message: SimulatedMessage, scenario: SimulationScenario, fault: SimulationScenario.Fault?, requestID: String,
        _ writer: HTTPResponseWriter
    ) async throws {
        try await EventLoop.sleep(
            for: message.generationTime(tokenInterval: scenario.tokenInterval, firstTokenDelay: scenario.firstTokenDelay))
        switch fault?.kind {
        case .drop?:
            throw HTTPStreamReset()
        case .stall?:
            while true { try await EventLoop.sleep(for: .seconds(3600)) }
        case .errorEvent?:
            // Without a stream to put an error event in, the API answers with the error status instead.
            var failure = SimulatorFailure(status: 529, type: "overloaded_error", message: "Overloaded")
            if let type = fault?.errorType { failure.type = type }
            if let text = fault?.message { failure.message = text }
            return try await respond(failure, requestID: requestID, writer)
        case .httpStatus?, nil:
            break
        }
        try writer.head(status: 200, headers: responseHeaders(message, requestID: requestID, contentType: "application/json"))
        try await writer.write(message.messageJSON.serialized())
    }

    private func stream(
        _ message: SimulatedMessage, scenario: SimulationScenario, fault: SimulationScenario.Fault?, requestID: String,
        _ writer: HTTPResponseWriter
    ) async throws {
        var headers = responseHeaders(message, requestID: requestID, contentType: "text/event-stream; charset=utf-8")
        headers.append(("cache-control", "no-cache"))
        try writer.head(status: 200, headers: headers)
        var emitter = EventEmitter(writer: writer, pingInterval: scenario.pingInterval)
        var sent = 0
        for event in message.events(tokenInterval: scenario.tokenInterval, firstTokenDelay: scenario.firstTokenDelay) {
            if event.delay > .zero { try await emitter.pause(event.delay) }
            if let fault, sent == fault.afterEvents { return try await emitter.trigger(fault) }
            try await emitter.send(event.name, scenario.stampDeltas && event.isTextDelta ? Self.stamped(event.data) : event.data)
            sent += 1
            try await emitter.pingIfDue()
        }
        // A fault whose after_events is at or past the end fires after the last event.
        if let fault { try await emitter.trigger(fault) }
    }
}

extension AnthropicSimulator {
    /// The text delta's data with `@T<unix-ns>;` (now, on the realtime clock) before its text.
    static func stamped(_ data: String) -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let stamp = "@T\(Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec));"
        // The delta object's only "text" key is the text itself (its type is the value "text_delta").
        let bytes = Array(data.utf8)
        guard let end = bytes.indices.first(where: { bytes[$0...].starts(with: textKey) }).map({ $0 + textKey.count }) else {
            return data
        }
        return String(decoding: bytes[..<end], as: UTF8.self) + stamp + String(decoding: bytes[end...], as: UTF8.self)
    }

    private static let textKey = Array(#""text":""#.utf8)
}

/// Writes SSE events, with a ping whenever `pingInterval` has passed since the last one.
private struct EventEmitter {
    let writer: HTTPResponseWriter
    let pingInterval: Duration
    var nextPing: ContinuousClock.Instant

    init(writer: HTTPResponseWriter, pingInterval: Duration) {
        self.writer = writer
        self.pingInterval = pingInterval
        nextPing = .now + pingInterval
    }

    mutating func send(_ name: String, _ data: String) async throws {
        try await writer.write(SSEEncoder.encode(event: name, data: data))
    }

    private static let pingData = OrderedJSON.object([("type", "ping")]).serializedString

    mutating func ping() async throws {
        try await send("ping", Self.pingData)
        nextPing = .now + pingInterval
    }

    mutating func pingIfDue() async throws {
        if pingInterval > .zero, ContinuousClock.now >= nextPing { try await ping() }
    }

    /// Waits `duration`, pinging on schedule meanwhile. Throws `CancellationError` when the client goes away.
    mutating func pause(_ duration: Duration) async throws {
        let deadline = ContinuousClock.now + duration
        while pingInterval > .zero, nextPing < deadline {
            try await EventLoop.sleep(until: nextPing)
            try await ping()
        }
        try await EventLoop.sleep(until: deadline)
    }

    mutating func trigger(_ fault: SimulationScenario.Fault) async throws {
        switch fault.kind {
        case .drop:
            // Let the events already written leave first: some clients (curl 7.88's HTTP/2 layer) drop DATA that
            // arrives in the same read as the RST_STREAM, which would make `after_events` unreliable.
            try await EventLoop.sleep(for: .milliseconds(25))
            throw HTTPStreamReset()
        case .stall:
            // Nothing more (or pings only) until the client resets the stream, which cancels this task.
            while true {
                if fault.keepAlive, pingInterval > .zero {
                    try await pause(.seconds(3600))
                } else {
                    try await EventLoop.sleep(for: .seconds(3600))
                }
            }
        case .errorEvent:
            let error: OrderedJSON = [
                "type": "error",
                "error": ["type": .string(fault.errorType ?? "overloaded_error"), "message": .string(fault.message ?? "Overloaded")],
            ]
            try await send("error", error.serializedString)
        case .httpStatus:
            break  // answered before the stream started
        }
    }
}

/// Attempts per scenario, for faults limited to the first `times` attempts; bounded, least recently used first out.
struct AttemptTable: Sendable {
    struct Key: Hashable, Sendable {
        var first: UInt64
        var second: UInt64
        var length: Int
    }

    private struct Entry: Sendable {
        var attempts: Int
        var lastUse: UInt64
    }

    let capacity: Int
    private var entries: [Key: Entry] = [:]
    private var clock: UInt64 = 0

    init(capacity: Int) {
        self.capacity = capacity
    }

    /// Counts one more attempt of `key`; returns its number (1 for the first).
    mutating func next(_ key: Key) -> Int {
        clock += 1
        let attempts = (entries[key]?.attempts ?? 0) + 1
        entries[key] = Entry(attempts: attempts, lastUse: clock)
        if entries.count > capacity {
            // Evict the least recently used quarter at once, so eviction is amortised O(1)·log.
            let keep = max(1, capacity * 3 / 4)
            let oldest = entries.sorted { $0.value.lastUse < $1.value.lastUse }.prefix(entries.count - keep)
            for (key, _) in oldest { entries[key] = nil }
        }
        return attempts
    }

    mutating func removeAll() {
        entries = [:]
    }

    var count: Int { entries.count }
}
