import SluiceIO
import SluiceUpstream
import SluiceWire

/// A tool call the model made in a completed turn.
struct ToolUse: Sendable {
    var id: String
    var name: String
    var input: ToolInput

    /// The input as sent back to the API in the assistant turn.
    var inputJSON: JSONValue {
        if case .parsed(let value) = input { return value }
        return [:]
    }
}

/// Runs one turn's tool calls (in parallel, bounded), streaming their events, and returns the
/// `tool_result` blocks for the next request. Failures become `is_error` results: the model
/// gets to recover and the stream goes on.
struct ToolRunner {
    let engine: StreamEngine
    let channel: StreamChannel
    /// The tools this request allowed.
    let allowed: [String]

    /// Largest tool output shown in a `tool_complete` event; the model always gets all of it.
    static let maxEventOutputBytes = 64 * 1024

    func run(_ toolUses: [ToolUse]) async -> [JSONValue] {
        let limit = max(1, engine.configuration.maxParallelTools)
        return await withTaskGroup(of: (Int, JSONValue).self) { group in
            var results = [JSONValue?](repeating: nil, count: toolUses.count)
            var next = 0
            func startNext() {
                guard next < toolUses.count else { return }
                let index = next
                let toolUse = toolUses[index]
                next += 1
                group.addTask { (index, await runOne(toolUse)) }
            }
            for _ in 0..<limit { startNext() }
            for await (index, result) in group {
                results[index] = result
                startNext()
            }
            return results.compactMap { $0 }
        }
    }

    private func runOne(_ toolUse: ToolUse) async -> JSONValue {
        channel.emit(.toolStart(id: toolUse.id, name: toolUse.name, input: toolUse.inputJSON))
        let outcome: Result<JSONValue, ToolError>
        if let tool = engine.tools[toolUse.name], allowed.contains(toolUse.name) {
            switch toolUse.input {
            case .parsed(let input):
                if let problem = ToolInputValidation.validate(input, against: tool.inputSchema) {
                    outcome = .failure(ToolError("invalid input for \(tool.name): \(problem)"))
                } else {
                    outcome = await execute(tool, input: input, id: toolUse.id)
                }
            case .invalid(_, let error):
                outcome = .failure(ToolError("the tool input is not valid JSON: \(error)"))
            case .incomplete:
                outcome = .failure(ToolError("the tool input was incomplete"))
            }
        } else {
            outcome = .failure(
                ToolError(
                    "unknown tool '\(toolUse.name)': this stream offers \(allowed.isEmpty ? "no tools" : allowed.joined(separator: ", "))"))
        }
        switch outcome {
        case .success(let output):
            channel.emit(.toolComplete(id: toolUse.id, output: Self.eventOutput(output)))
            return [
                "type": "tool_result", "tool_use_id": .string(toolUse.id),
                "content": .string(Self.modelContent(output, limit: engine.configuration.maxToolResultBytes)),
            ]
        case .failure(let error):
            channel.emit(.toolError(id: toolUse.id, error: error.message))
            return ["type": "tool_result", "tool_use_id": .string(toolUse.id), "content": .string(error.message), "is_error": true]
        }
    }

    /// Runs the tool with `--tool-timeout`; cancellation of the stream cancels it too.
    private func execute(_ tool: any StreamingTool, input: JSONValue, id: String) async -> Result<JSONValue, ToolError> {
        let progress = ToolProgress { [channel] message, percentage in
            channel.emit(.toolProgress(id: id, message: message, percentage: percentage))
        }
        let timeout = engine.configuration.toolTimeout
        let work = Task { () -> Result<JSONValue, ToolError> in
            do throws(ToolError) {
                return .success(try await tool.execute(input: input, progress: progress))
            } catch {
                return .failure(error)
            }
        }
        let timer = DeadlineTimer(after: timeout) { work.cancel() }
        defer { timer.cancel() }
        let result = await withTaskCancellationHandler {
            await work.value
        } onCancel: {
            work.cancel()
        }
        if timer.fired {
            return .failure(ToolError("\(tool.name) did not finish within the tool timeout of \(DurationParsing.format(timeout))"))
        }
        return result
    }

    /// The result as the model gets it: the output's JSON, cut at `--tool-result-max-bytes` (the API
    /// limits request sizes, and every later turn carries it again) with a note saying so.
    static func modelContent(_ output: JSONValue, limit: Int) -> String {
        let text = output.serializedString
        guard text.utf8.count > limit else { return text }
        let kept = String(decoding: text.utf8.prefix(limit), as: UTF8.self)
        return kept + "\n[truncated by Sluice: \(limit) of \(text.utf8.count) bytes shown; read smaller parts with offset and length]"
    }

    /// The output for the `tool_complete` event: as is, or with long text fields cut short.
    static func eventOutput(_ output: JSONValue) -> JSONValue {
        guard output.serialized().count > maxEventOutputBytes, case .object(var fields) = output else { return output }
        for (key, value) in fields {
            if case .string(let text) = value, text.utf8.count > maxEventOutputBytes / 2 {
                fields[key] = .string(String(decoding: text.utf8.prefix(maxEventOutputBytes / 2), as: UTF8.self))
                fields["truncated_for_event"] = true
            }
        }
        return .object(fields)
    }
}
