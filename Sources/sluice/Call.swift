import ArgumentParser
import Dispatch
import Glibc
import SluiceClient
import SluiceWire

struct Call: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send one message through a Sluice server and stream the answer (or resume a stream).",
        discussion: """
            Text goes to stdout as it arrives. Queueing, retries, restarts and tool progress go to stderr, and so \
            does a closing summary: token usage, time to first token, total time. --json prints every event as one \
            JSON line on stdout instead of the text. A connection that drops mid-stream is resumed from the last seq \
            received (a few attempts with backoff), with no text lost or repeated. Ctrl-C cancels the call \
            (RST_STREAM CANCEL).

            Exit status: 0 when the call ends OK; otherwise its gRPC status code, 1 to 16 (1 CANCELLED, \
            3 INVALID_ARGUMENT, 4 DEADLINE_EXCEEDED, 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE — also for a server that \
            cannot be reached — 16 UNAUTHENTICATED, …); 64 for bad flags.
            """
    )

    @Argument(help: "The user message (not with --resume).")
    var prompt: String?

    @OptionGroup var server: ServerOptions
    @Option(help: "Model name.")
    var model = "claude-sonnet-4-5"
    @Option(help: "Largest answer, in tokens.")
    var maxTokens = 1024
    @Option(help: "System prompt.")
    var system: String?
    @Option(help: "Server tools the model may use, comma-separated (e.g. read_file,list_directory).")
    var tools: String?
    @Option(help: "Enable extended thinking with this budget in tokens (at least 1024, below --max-tokens); shown dimmed on stderr.")
    var thinking: Int?
    @Option(
        help: ArgumentHelp(
            "A JSON file of client tool definitions (one object or an array; name, description, input_schema).",
            discussion: "A tool call is printed as a JSON line on stdout; the call exits 0 with stop reason tool_use.",
            valueName: "file"))
    var toolDef: [String] = []
    @Option(help: ArgumentHelp("An image to send (png, jpeg, gif or webp), base64-encoded; repeatable.", valueName: "file"))
    var image: [String] = []
    @Option(help: ArgumentHelp("A document to send (pdf, or plain text), base64-encoded; repeatable.", valueName: "file"))
    var document: [String] = []
    @Option(help: "Simulator scenario as JSON, e.g. '{\"output_tokens\":200,\"token_interval_ms\":20}'.")
    var simulation: String?
    @Option(help: "Deadline of the call, sent as grpc-timeout (e.g. 30s, 2m).")
    var timeout: CLIDuration?
    @Flag(help: "Print every event as a JSON line instead of the text.")
    var json = false
    @Option(help: "Re-attach to a running stream by its id (st_…) instead of sending a message.")
    var resume: String?
    @Option(help: "With --resume: replay the events after this seq.")
    var afterSeq: Int?

    func validate() throws {
        if resume == nil && prompt == nil { throw ValidationError("give a prompt, or --resume STREAM_ID") }
        if resume != nil && prompt != nil { throw ValidationError("--resume takes no prompt") }
        if afterSeq != nil && resume == nil { throw ValidationError("--after-seq needs --resume") }
        if let afterSeq, afterSeq < 0 { throw ValidationError("--after-seq must be 0 or more") }
        if maxTokens < 1 { throw ValidationError("--max-tokens must be at least 1") }
        if let thinking, thinking < 1024 || thinking >= maxTokens {
            throw ValidationError("--thinking must be at least 1024 and below --max-tokens (\(maxTokens))")
        }
        if resume != nil && !(toolDef.isEmpty && image.isEmpty && document.isEmpty && thinking == nil) {
            throw ValidationError("--resume takes no --thinking, --tool-def, --image or --document")
        }
        _ = try simulationValue()
    }

    private func simulationValue() throws -> JSONValue? {
        guard let simulation else { return nil }
        guard case .object? = try? JSONValue(parsing: simulation) else {
            throw ValidationError("--simulation must be a JSON object, e.g. '{\"output_tokens\":200}'")
        }
        return try JSONValue(parsing: simulation)
    }

    private func request() throws -> SluiceMessageRequest {
        var content: JSONValue = .string(prompt ?? "")
        let attachments = try image.map { try CallAttachment.image(path: $0) } + document.map { try CallAttachment.document(path: $0) }
        if !attachments.isEmpty { content = .array(attachments + [["type": "text", "text": .string(prompt ?? "")]]) }
        var request = SluiceMessageRequest(
            model: model, maxTokens: maxTokens, messages: [.init(role: "user", content: content)], system: system,
            tools: tools.map { $0.split(separator: ",").map { String($0.trimmingPrefix(while: \.isWhitespace)) } } ?? [],
            simulation: try simulationValue()
        )
        request.toolDefinitions = try toolDef.flatMap { try CallAttachment.toolDefinitions(path: $0) }
        request.thinkingBudget = thinking
        return request
    }

    func run() async throws {
        let client = try server.makeClient()
        let started = ContinuousClock.now
        let stream =
            if let resume {
                client.resume(streamID: resume, afterSeq: afterSeq ?? 0, timeout: timeout?.duration)
            } else {
                client.sendMessage(try request(), timeout: timeout?.duration)
            }

        signal(SIGINT, SIG_IGN)
        let interrupt = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        interrupt.setEventHandler { stream.cancel() }
        interrupt.resume()
        defer { interrupt.cancel() }

        var renderer = EventRenderer(json: json, started: started)
        do {
            for try await event in stream { renderer.render(event) }
        } catch {
            // The status below says why.
        }
        let status = await stream.status
        renderer.finish(status, elapsed: .now - started)
        await client.shutdown()
        if !status.isOK { throw ExitCode(Int32(min(max(status.code.rawValue, 1), 16))) }
    }
}

/// Turns events into text on stdout and notes on stderr (or JSON lines), and writes the summary.
private struct EventRenderer {
    let json: Bool
    let started: ContinuousClock.Instant
    private let stdoutIsTerminal = isatty(STDOUT_FILENO) == 1
    private let stderrIsTerminal = isatty(STDERR_FILENO) == 1
    /// Text on stdout not yet ended by a newline.
    private var stdoutMidLine = false
    /// A progress bar on stderr is being redrawn in place.
    private var progressShowing = false
    private var firstToken: Duration?
    private var streamID: String?
    private var lastSeq = 0
    private var usage: (input: Int, output: Int)?
    private var toolNames: [String: String] = [:]
    private var stopReason: String?
    /// Thinking is being written (dimmed) on stderr.
    private var thinkingShowing = false
    /// Citations, printed as numbered footnotes after the answer.
    private var footnotes: [String] = []

    init(json: Bool, started: ContinuousClock.Instant) {
        self.json = json
        self.started = started
    }

    mutating func render(_ event: SluiceEvent) {
        if streamID == nil { streamID = event.streamID }
        lastSeq = event.seq
        if case .messageDelta = event.kind, firstToken == nil { firstToken = .now - started }
        if case .streamComplete(let input, let output) = event.kind { usage = (input, output) }
        if json {
            writeOut(String(decoding: event.json, as: UTF8.self) + "\n")
            return
        }
        if case .thinkingDelta = event.kind {} else { endThinking() }
        switch event.kind {
        case .thinkingDelta(_, let text):
            endProgress()
            if !thinkingShowing {
                writeErr(stderrIsTerminal ? "\u{1B}[2mThinking: " : "Thinking: ")
                thinkingShowing = true
            }
            writeErr(text)
        case .toolCall(_, let toolUseID, let name, let input):
            breakStdoutLine()
            if stdoutMidLine { writeOut("\n") }
            let call: JSONValue = ["type": "tool_call", "tool_use_id": .string(toolUseID), "name": .string(name), "input": input]
            writeOut(call.serializedString + "\n")
            stdoutMidLine = false
        case .citation(_, let citation):
            footnotes.append(Self.footnote(citation))
            writeOut("[\(footnotes.count)]")
            stdoutMidLine = true
        case .messageStop(_, let reason):
            stopReason = reason
        case .messageDelta(_, let text):
            endProgress()
            writeOut(text)
            if !text.isEmpty { stdoutMidLine = !text.hasSuffix("\n") }
        case .streamQueued(let position):
            note("queued at position \(position)")
        case .upstreamRetry(let attempt, let reason, let delay, let mode):
            note("upstream retry \(attempt) in \(delay) ms (\(mode)): \(reason)")
        case .messageRestart(_, let reason):
            note("message restarted (\(reason)): the text that follows replaces the partial text above")
        case .toolStart(let id, let name, _):
            toolNames[id] = name
            progress(id: id, percentage: 0, message: "started")
        case .toolProgress(let id, let message, let percentage):
            progress(id: id, percentage: percentage, message: message)
        case .toolComplete(let id, _):
            progress(id: id, percentage: 100, message: "done")
            endProgress()
        case .toolError(let id, let error):
            note("\(toolNames[id] ?? "tool") failed: \(error)")
        case .streamHandoff(let reason):
            note("the server handed the stream off (\(reason)); resuming it on another replica")
        default: break
        }
    }

    /// `cited text — title (url)`.
    private static func footnote(_ citation: JSONValue) -> String {
        var source = citation["document_title"]?.stringValue ?? citation["title"]?.stringValue ?? ""
        if let url = citation["url"]?.stringValue { source += source.isEmpty ? url : " (\(url))" }
        let cited = citation["cited_text"]?.stringValue ?? ""
        return source.isEmpty ? "“\(cited)”" : "“\(cited)” — \(source)"
    }

    private mutating func endThinking() {
        guard thinkingShowing else { return }
        writeErr(stderrIsTerminal ? "\u{1B}[0m\n" : "\n")
        thinkingShowing = false
    }

    /// `[#####     ] 50% read_file: message`, redrawn in place on a terminal.
    private mutating func progress(id: String, percentage: Int?, message: String) {
        breakStdoutLine()
        let name = toolNames[id] ?? "tool"
        let bar: String
        if let percentage {
            let filled = min(max(percentage, 0), 100) / 10
            bar = "[" + String(repeating: "#", count: filled) + String(repeating: " ", count: 10 - filled) + "] \(percentage)%"
        } else {
            bar = "[    ??    ]"
        }
        let line = "\(bar) \(name): \(message)"
        if stderrIsTerminal {
            writeErr("\r\u{1B}[K" + line)
            progressShowing = true
        } else {
            writeErr(line + "\n")
        }
    }

    private mutating func endProgress() {
        guard progressShowing else { return }
        writeErr("\n")
        progressShowing = false
    }

    private mutating func note(_ text: String) {
        endProgress()
        breakStdoutLine()
        writeErr("[\(text)]\n")
    }

    /// On one terminal, a note must not land in the middle of a line of text.
    private mutating func breakStdoutLine() {
        guard stdoutMidLine, stdoutIsTerminal, stderrIsTerminal else { return }
        writeOut("\n")
        stdoutMidLine = false
    }

    mutating func finish(_ status: RPCClientStatus, elapsed: Duration) {
        endThinking()
        endProgress()
        if stdoutMidLine { writeOut("\n") }
        for (number, footnote) in footnotes.enumerated() { writeOut("[\(number + 1)] \(footnote)\n") }
        var parts: [String] = []
        if let stopReason, stopReason != "end_turn" { parts.append("stop reason \(stopReason)") }
        if let usage {
            parts.append("\(usage.input) input + \(usage.output) output tokens")
        }
        if let firstToken { parts.append("first token \(Self.milliseconds(firstToken)) ms") }
        parts.append("total \(Self.milliseconds(elapsed)) ms")
        if let streamID { parts.append(streamID) }
        writeErr("[\(parts.joined(separator: " · "))]\n")
        guard !status.isOK else { return }
        writeErr("error: \(status.code.name): \(status.message)\n")
        if status.code == .unavailable, let streamID {
            writeErr("the stream may still be running: sluice call --resume \(streamID) --after-seq \(lastSeq)\n")
        }
    }

    private static func milliseconds(_ duration: Duration) -> Int {
        Int(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
    }

    private func writeOut(_ text: String) { writeAll(text, to: STDOUT_FILENO) }
    private func writeErr(_ text: String) { writeAll(text, to: STDERR_FILENO) }
}

/// Unbuffered, so each delta shows the moment it arrives (and the C `stdout` global, which Swift 6
/// rejects as shared mutable state, is not needed).
func writeAll(_ text: String, to fd: Int32) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        bytes = bytes.dropFirst(written)
    }
}
