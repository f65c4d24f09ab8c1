import SluiceWire

/// What the `sluice-simulation` request header (a JSON object) asks of one simulated request.
/// schema/simulation.schema.json documents it; unknown fields are rejected so that typos don't go unnoticed.
public struct SimulationScenario: Sendable, Equatable {
    public static let headerName = "sluice-simulation"

    public struct ToolCall: Sendable, Equatable {
        public var name: String
        public var input: JSONValue
    }

    /// How a trailing assistant message (prefill) is treated.
    public enum PrefillPolicy: String, Sendable {
        /// Continue from it when it is a prefix of what the simulator would say.
        case `continue`
        /// 400, as models that don't support prefill answer.
        case reject
        /// 400 when the prefill ends with whitespace, as the API does.
        case rejectTrailingWhitespace = "reject_trailing_whitespace"
    }

    public struct Fault: Sendable, Equatable {
        public enum Kind: String, Sendable {
            /// Reset the HTTP/2 stream after `afterEvents` events.
            case drop
            /// Send nothing more after `afterEvents` events (optionally pings only) until the client goes away.
            case stall
            /// Send an `error` event after `afterEvents` events and end the response.
            case errorEvent = "error_event"
            /// Answer with HTTP `status` and the API's error body at once.
            case httpStatus = "http_status"
        }

        public var kind: Kind
        public var afterEvents = 0
        public var status = 529
        /// `retry-after` header (seconds) on `http_status` responses; 429s get 1 unless set.
        public var retryAfterSeconds: Int?
        /// The first `times` attempts of the same scenario fail; nil: every attempt.
        public var times: Int?
        /// `stall` only: keep sending pings every `ping_interval_ms` while stalled.
        public var keepAlive = false
        /// Overrides the error type (`error_event`, `http_status`).
        public var errorType: String?
        public var message: String?
        /// `x-should-retry` header on `http_status` responses.
        public var shouldRetry: Bool?
    }

    public var seed: UInt64 = 0
    public var outputTokens = 64
    /// The answer's text verbatim instead of generated prose (`outputTokens` is then ignored): how tests
    /// script markdown, HTML or anything else a model might say.
    public var text: String?
    public var tokenInterval: Duration = .zero
    public var firstTokenDelay: Duration = .zero
    /// Pings after `message_start` and then every interval; `.zero` sends only the first.
    public var pingInterval: Duration = .seconds(10)
    public var toolCalls: [ToolCall] = []
    /// Length of the thinking block that precedes the answer when the request enables extended thinking
    /// (at most its `budget_tokens`).
    public var thinkingTokens = 0
    /// Whether a short text block precedes tool calls.
    public var toolPreamble = true
    public var prefill = PrefillPolicy.continue
    public var fault: Fault?
    /// Prefix each text delta with `@T<unix-ns>;`, its send time, so load tests can measure
    /// end-to-end delivery latency (simulator emits → client receives) on one machine's clock.
    public var stampDeltas = false

    public init() {}

    static let maxOutputTokens = 1_000_000
    static let maxMilliseconds = 3_600_000.0

    /// Parses the header value; nil or blank gives the defaults.
    public init(header: String?) throws(SimulationScenarioError) {
        self.init()
        guard let header, header.contains(where: { !$0.isWhitespace }) else { return }
        let json: JSONValue
        do throws(JSONParseError) {
            json = try JSONValue(parsing: header)
        } catch {
            throw SimulationScenarioError("\(Self.headerName) header is not valid JSON: \(error.description)")
        }
        guard let root = json.objectValue else {
            throw SimulationScenarioError("\(Self.headerName) header must be a JSON object")
        }
        let fields = Fields(path: "", object: root)
        try fields.allow([
            "seed", "output_tokens", "token_interval_ms", "first_token_delay_ms", "ping_interval_ms",
            "tool_calls", "tool_preamble", "prefill", "fault", "stamp_deltas", "text", "thinking_tokens",
        ])
        if let seed = try fields.integer("seed", in: 0...Int(1 << 53)) { self.seed = UInt64(seed) }
        if let tokens = try fields.integer("output_tokens", in: 0...Self.maxOutputTokens) { outputTokens = tokens }
        if let tokens = try fields.integer("thinking_tokens", in: 0...Self.maxOutputTokens) { thinkingTokens = tokens }
        text = try fields.string("text")
        if let ms = try fields.milliseconds("token_interval_ms") { tokenInterval = ms }
        if let ms = try fields.milliseconds("first_token_delay_ms") { firstTokenDelay = ms }
        if let ms = try fields.milliseconds("ping_interval_ms") { pingInterval = ms }
        if let preamble = try fields.bool("tool_preamble") { toolPreamble = preamble }
        if let stamp = try fields.bool("stamp_deltas") { stampDeltas = stamp }
        if let policy = try fields.string("prefill") {
            guard let parsed = PrefillPolicy(rawValue: policy) else {
                throw fields.failure("prefill", "must be \"continue\", \"reject\" or \"reject_trailing_whitespace\"")
            }
            prefill = parsed
        }
        if let calls = root["tool_calls"] {
            guard let array = calls.arrayValue else { throw fields.failure("tool_calls", "must be an array") }
            toolCalls = try array.enumerated().map { index, call throws(SimulationScenarioError) in
                let path = "tool_calls[\(index)]"
                guard let object = call.objectValue else {
                    throw SimulationScenarioError("\(Self.headerName): '\(path)' must be an object")
                }
                let fields = Fields(path: path + ".", object: object)
                try fields.allow(["name", "input"])
                guard let name = try fields.string("name"), !name.isEmpty else {
                    throw fields.failure("name", "is required (a non-empty string)")
                }
                let input = object["input"] ?? [:]
                guard input.objectValue != nil else { throw fields.failure("input", "must be an object") }
                return ToolCall(name: name, input: input)
            }
        }
        if let fault = root["fault"] {
            guard let object = fault.objectValue else { throw fields.failure("fault", "must be an object") }
            self.fault = try Self.parseFault(object)
        }
    }

    private static func parseFault(_ object: [String: JSONValue]) throws(SimulationScenarioError) -> Fault {
        let fields = Fields(path: "fault.", object: object)
        try fields.allow([
            "kind", "after_events", "status", "retry_after_s", "times", "keep_alive", "error_type", "message", "should_retry",
        ])
        guard let kindName = try fields.string("kind") else {
            throw fields.failure("kind", "is required: \"drop\", \"stall\", \"error_event\" or \"http_status\"")
        }
        guard let kind = Fault.Kind(rawValue: kindName) else {
            throw fields.failure("kind", "must be \"drop\", \"stall\", \"error_event\" or \"http_status\", not \"\(kindName)\"")
        }
        var fault = Fault(kind: kind)
        if let after = try fields.integer("after_events", in: 0...10_000_000) { fault.afterEvents = after }
        if let status = try fields.integer("status", in: 400...599) { fault.status = status }
        fault.retryAfterSeconds = try fields.integer("retry_after_s", in: 0...86_400)
        fault.times = try fields.integer("times", in: 0...Int(Int32.max))
        if let keepAlive = try fields.bool("keep_alive") { fault.keepAlive = keepAlive }
        fault.errorType = try fields.string("error_type")
        fault.message = try fields.string("message")
        fault.shouldRetry = try fields.bool("should_retry")
        return fault
    }

    /// Typed field access whose errors name the field.
    private struct Fields {
        let path: String
        let object: [String: JSONValue]

        func failure(_ key: String, _ problem: String) -> SimulationScenarioError {
            SimulationScenarioError("\(SimulationScenario.headerName): '\(path)\(key)' \(problem)")
        }

        func allow(_ keys: Set<String>) throws(SimulationScenarioError) {
            if let unknown = object.keys.sorted().first(where: { !keys.contains($0) }) {
                throw SimulationScenarioError(
                    "\(SimulationScenario.headerName): unknown field '\(path)\(unknown)' (known: \(keys.sorted().joined(separator: ", ")))")
            }
        }

        func integer(_ key: String, in range: ClosedRange<Int>) throws(SimulationScenarioError) -> Int? {
            guard let value = object[key], value != .null else { return nil }
            guard let int = value.intValue, range.contains(int) else {
                throw failure(key, "must be an integer in \(range.lowerBound)...\(range.upperBound)")
            }
            return int
        }

        func milliseconds(_ key: String) throws(SimulationScenarioError) -> Duration? {
            guard let value = object[key], value != .null else { return nil }
            guard let ms = value.doubleValue, ms >= 0, ms <= SimulationScenario.maxMilliseconds else {
                throw failure(key, "must be a number of milliseconds in 0...\(Int(SimulationScenario.maxMilliseconds))")
            }
            return .nanoseconds(Int64((ms * 1_000_000).rounded()))
        }

        func bool(_ key: String) throws(SimulationScenarioError) -> Bool? {
            guard let value = object[key], value != .null else { return nil }
            guard let bool = value.boolValue else { throw failure(key, "must be true or false") }
            return bool
        }

        func string(_ key: String) throws(SimulationScenarioError) -> String? {
            guard let value = object[key], value != .null else { return nil }
            guard let string = value.stringValue else { throw failure(key, "must be a string") }
            return string
        }
    }
}

public struct SimulationScenarioError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String

    init(_ message: String) {
        self.message = message
    }

    public var description: String { message }
}
