import SluiceIO
import SluiceWire

/// A server-side tool the model may call. `execute` runs off the event loops, reports progress,
/// and must stop promptly when its task is cancelled (stream cancelled, deadline, `--tool-timeout`).
public protocol StreamingTool: Sendable {
    var name: String { get }
    var description: String { get }
    /// JSON Schema of the input, sent to the upstream in the request's `tools`.
    var inputSchema: JSONValue { get }
    func execute(input: JSONValue, progress: ToolProgress) async throws(ToolError) -> JSONValue
}

/// A tool failure the model sees as an `is_error` tool_result, and the client as `tool_error`.
public struct ToolError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Forwards a tool's progress to its stream, at most 10 updates a second; the final 100 % update
/// always goes through, and percentages never go backwards.
public final class ToolProgress: Sendable {
    private struct State {
        var lastSent: ContinuousClock.Instant?
        var lastPercentage = -1
    }

    static let minimumInterval: Duration = .milliseconds(100)
    private let state = LockedValue(State())
    private let send: @Sendable (String, Int?) -> Void

    public init(send: @escaping @Sendable (String, Int?) -> Void) {
        self.send = send
    }

    public func report(_ message: String, percentage: Int? = nil) {
        let now = ContinuousClock.now
        let clamped = percentage.map { min(max($0, 0), 100) }
        let shouldSend = state.withLock { state -> Bool in
            // Nothing after 100 %, and percentages never go backwards.
            if state.lastPercentage == 100 { return false }
            if let clamped, clamped < state.lastPercentage { return false }
            let isFinal = clamped == 100 && state.lastPercentage < 100
            if !isFinal, let last = state.lastSent, now - last < Self.minimumInterval { return false }
            state.lastSent = now
            if let clamped { state.lastPercentage = clamped }
            return true
        }
        if shouldSend { send(message, clamped) }
    }
}

/// Checks a tool input against the small subset of JSON Schema our tools use: an object with
/// typed properties, required keys and no others.
enum ToolInputValidation {
    static func validate(_ input: JSONValue, against schema: JSONValue) -> String? {
        guard case .object(let fields) = input else { return "the input must be a JSON object" }
        let properties = schema["properties"]?.objectValue ?? [:]
        for required in schema["required"]?.arrayValue?.compactMap(\.stringValue) ?? [] where fields[required] == nil {
            return "missing required input '\(required)'"
        }
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
            guard let property = properties[key] else { return "unknown input '\(key)'" }
            let type = property["type"]?.stringValue
            let matches: Bool =
                switch (type, value) {
                case ("string", .string), ("boolean", .bool), ("object", .object), ("array", .array): true
                case ("integer", .number(let number)): number.isIntegral && number.doubleValue >= 0
                case ("number", .number): true
                default: type == nil
                }
            if !matches { return "input '\(key)' must be \(type == "integer" ? "a non-negative integer" : "a \(type ?? "value")")" }
        }
        return nil
    }
}
