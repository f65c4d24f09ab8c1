import Foundation
import Logging
import SluiceIO
import SluiceUpstream
import SluiceWire
import Testing

@testable import SluiceEngine

/// A temporary tool root with a few files, and things just outside it to escape to.
final class SandboxFixture {
    let base: String
    let root: String

    init() throws {
        base = NSTemporaryDirectory() + "sluice-tools-" + UUID().uuidString
        root = base + "/root"
        let files = FileManager.default
        try files.createDirectory(atPath: root + "/sub", withIntermediateDirectories: true)
        try "hello from inside\nsecond line\n".write(toFile: root + "/hello.txt", atomically: true, encoding: .utf8)
        try "needle in sub\n".write(toFile: root + "/sub/deep.txt", atomically: true, encoding: .utf8)
        try Data([0x41, 0x00, 0x42]).write(to: URL(fileURLWithPath: root + "/binary.bin"))
        try "TOP SECRET outside\n".write(toFile: base + "/secret.txt", atomically: true, encoding: .utf8)
        try files.createSymbolicLink(atPath: root + "/escape", withDestinationPath: base + "/secret.txt")
        mkfifo(root + "/pipe", 0o600)
    }

    deinit { try? FileManager.default.removeItem(atPath: base) }

    func sandbox() throws -> ToolSandbox { try ToolSandbox(roots: [root]) }
}

final class ProgressLog: Sendable {
    let entries = LockedValue<[(String, Int?)]>([])
    func reporter() -> ToolProgress { ToolProgress { message, percentage in self.entries.withLock { $0.append((message, percentage)) } } }
    var percentages: [Int] { entries.withLock { $0.compactMap(\.1) } }
}

@Suite struct ToolSandboxTests {
    @Test(arguments: ["../secret.txt", "escape", "pipe", "/proc/self/environ", "/etc/passwd", "sub/../../secret.txt"])
    func escapesAreRefusedAndNothingOutsideIsRead(path: String) async throws {
        let fixture = try SandboxFixture()
        let tool = ReadFileTool(sandbox: try fixture.sandbox(), maxBytes: 1 << 20)
        do {
            let output = try await tool.execute(input: ["path": .string(path)], progress: ProgressLog().reporter())
            Issue.record("\(path) was read: \(output)")
        } catch {
            #expect(error.message.contains("sandbox rule") || error.message.contains("does not exist inside"), "\(error.message)")
            #expect(!error.message.contains("TOP SECRET"))
        }
    }

    @Test func readsTextWithMonotonicProgressEndingAt100() async throws {
        let fixture = try SandboxFixture()
        let big = String(repeating: "0123456789abcdef\n", count: 40_000)
        try big.write(toFile: fixture.root + "/big.txt", atomically: true, encoding: .utf8)
        let log = ProgressLog()
        let output = try await ReadFileTool(sandbox: try fixture.sandbox(), maxBytes: 1 << 24).execute(
            input: ["path": "big.txt"], progress: log.reporter())
        #expect(output["content"]?.stringValue == big)
        #expect(log.percentages.last == 100)
        #expect(log.percentages == log.percentages.sorted())
    }

    @Test func binaryAndOversizedFilesAreClearErrors() async throws {
        let fixture = try SandboxFixture()
        let sandbox = try fixture.sandbox()
        await #expect(throws: ToolError.self) {
            try await ReadFileTool(sandbox: sandbox, maxBytes: 1 << 20).execute(
                input: ["path": "binary.bin"], progress: ProgressLog().reporter())
        }
        do {
            _ = try await ReadFileTool(sandbox: sandbox, maxBytes: 4).execute(
                input: ["path": "hello.txt"], progress: ProgressLog().reporter())
            Issue.record("a file over the cap was read")
        } catch {
            #expect(error.message.contains("limit of 4 bytes"))
        }
    }

    @Test func listsAndSearchesInsideTheRootOnly() async throws {
        let fixture = try SandboxFixture()
        let sandbox = try fixture.sandbox()
        let listing = try await ListDirectoryTool(sandbox: sandbox).execute(
            input: ["path": ".", "recursive": true], progress: ProgressLog().reporter())
        let paths = Set(listing["entries"]?.arrayValue?.compactMap { $0["path"]?.stringValue } ?? [])
        #expect(paths.isSuperset(of: ["hello.txt", "sub", "sub/deep.txt", "escape"]))
        #expect(listing["entries"]?.arrayValue?.first { $0["path"] == "escape" }?["kind"] == "symlink")
        let search = try await SearchFilesTool(sandbox: sandbox, maxBytes: 1 << 20).execute(
            input: ["path": ".", "pattern": "needle|second", "regex": true], progress: ProgressLog().reporter())
        let found = search["matches"]?.arrayValue?.map { "\($0["file"]?.stringValue ?? ""):\($0["line"]?.intValue ?? 0)" }
        #expect(found == ["hello.txt:2", "sub/deep.txt:1"])
        let secret = try await SearchFilesTool(sandbox: sandbox, maxBytes: 1 << 20).execute(
            input: ["path": ".", "pattern": "TOP SECRET"], progress: ProgressLog().reporter())
        #expect(secret["matches"]?.arrayValue?.isEmpty == true, "symlinks out of the root are not followed")
    }

    @Test func progressIsThrottledButTheFinalUpdateAlwaysArrives() {
        let log = ProgressLog()
        let progress = log.reporter()
        for percentage in 0..<100 { progress.report("p", percentage: percentage) }
        progress.report("done", percentage: 100)
        #expect(log.percentages.count <= 3)
        #expect(log.percentages.last == 100)
    }
}

@Suite struct ToolLoopTests {
    static func toolTurn(id: String, name: String, inputJSON: String) -> [FakeUpstream.Step] {
        [
            .event(
                .messageStart(id: "msg_t1", model: "claude-test", role: "assistant", usage: AnthropicUsage(inputTokens: 5, outputTokens: 1))
            ),
            .event(.contentBlockStart(index: 0, block: .toolUse(id: id, name: name))),
            .event(.contentBlockDelta(index: 0, delta: .inputJSON(""))),
            .event(.contentBlockDelta(index: 0, delta: .inputJSON(String(inputJSON.prefix(5))))),
            .event(.contentBlockDelta(index: 0, delta: .inputJSON(String(inputJSON.dropFirst(5))))),
            .event(.contentBlockStop(index: 0)),
            .event(.messageDelta(stopReason: "tool_use", stopSequence: nil, usage: AnthropicUsage(outputTokens: 3))),
            .event(.messageStop),
        ]
    }

    func engine(_ upstream: FakeUpstream, fixture: SandboxFixture, maxTurns: Int = 8) throws -> StreamEngine {
        var configuration = EngineConfiguration()
        configuration.retry = RetryPolicy(maxRetries: 2, baseDelay: .milliseconds(1), maxDelay: .milliseconds(2))
        configuration.maxTurns = maxTurns
        let sandbox = try fixture.sandbox()
        configuration.tools = [ReadFileTool(sandbox: sandbox, maxBytes: 1 << 20), ListDirectoryTool(sandbox: sandbox)]
        return StreamEngine(configuration: configuration, upstream: upstream, logger: Logger(label: "test"))
    }

    static let request = try! SendMessageRequest(
        json: Array(
            #"{"model":"claude-test","max_tokens":100,"tools":["read_file"],"messages":[{"role":"user","content":"read it"}]}"#.utf8)
    )

    @Test func aToolTurnRunsTheToolAndFeedsTheResultBack() async throws {
        let fixture = try SandboxFixture()
        let upstream = FakeUpstream([
            Self.toolTurn(id: "toolu_1", name: "read_file", inputJSON: #"{"path":"hello.txt"}"#),
            FakeUpstream.message(["It says hello."], id: "msg_t2"),
        ])
        let channel = try engine(upstream, fixture: fixture).start(Self.request, caller: "a", deadline: nil)
        let (events, end) = try await StreamEngineTests().collect(channel)
        #expect(end == nil)
        let types = events.compactMap { $0["type"]?.stringValue }
        #expect(types.first == "message_start")
        #expect(types.contains("tool_start") && types.contains("tool_complete"))
        #expect(events.first { $0["type"] == "tool_start" }?["input"] == ["path": "hello.txt"], "the complete parsed input")
        #expect(events.first { $0["type"] == "tool_complete" }?["output"]?["content"] == "hello from inside\nsecond line\n")
        #expect(types.filter { $0 == "message_start" }.count == 2)
        let second = try JSONValue(parsing: upstream.requests.withLock { $0[1] })
        let messages = try #require(second["messages"]?.arrayValue)
        #expect(messages.count == 3)
        #expect(messages[1]["content"]?.arrayValue?.first?["type"] == "tool_use")
        let result = try #require(messages[2]["content"]?.arrayValue?.first)
        #expect(result["tool_use_id"] == "toolu_1")
        #expect(result["is_error"] == nil)
        #expect(second["tools"]?.arrayValue?.first?["name"] == "read_file")
    }

    /// With thinking, the next turn must carry the thinking block verbatim (signature included) before the tool_use.
    @Test func aThinkingTurnGoesBackWholeWithItsSignature() async throws {
        let fixture = try SandboxFixture()
        var turn = Self.toolTurn(id: "toolu_1", name: "read_file", inputJSON: #"{"path":"hello.txt"}"#)
        let shifted: [FakeUpstream.Step] = turn.map { step in
            switch step {
            case .event(.contentBlockStart(0, let block)): .event(.contentBlockStart(index: 2, block: block))
            case .event(.contentBlockDelta(0, let delta)): .event(.contentBlockDelta(index: 2, delta: delta))
            case .event(.contentBlockStop(0)): .event(.contentBlockStop(index: 2))
            default: step
            }
        }
        turn =
            [shifted[0]] + [
                .event(.contentBlockStart(index: 0, block: .thinking(""))),
                .event(.contentBlockDelta(index: 0, delta: .thinking("Read it first."))),
                .event(.contentBlockDelta(index: 0, delta: .signature("sig=="))),
                .event(.contentBlockStop(index: 0)),
                .event(.contentBlockStart(index: 1, block: .text(""))),
                .event(.contentBlockStop(index: 1)),
            ] + shifted.dropFirst()
        let upstream = FakeUpstream([turn, FakeUpstream.message(["Done."], id: "msg_t2")])
        let request = try SendMessageRequest(
            json: Array(
                #"{"model":"claude-test","max_tokens":2000,"thinking":{"type":"enabled","budget_tokens":1024},"tools":["read_file"],"messages":[{"role":"user","content":"read it"}]}"#
                    .utf8))
        let (_, end) = try await StreamEngineTests().collect(
            try engine(upstream, fixture: fixture).start(request, caller: "a", deadline: nil))
        #expect(end == nil)
        let second = try JSONValue(parsing: upstream.requests.withLock { $0[1] })
        #expect(
            second["messages"]?.arrayValue?[1]["content"]
                == [
                    ["type": "thinking", "thinking": "Read it first.", "signature": "sig=="],
                    ["type": "tool_use", "id": "toolu_1", "name": "read_file", "input": ["path": "hello.txt"]],
                ])
        #expect(second["thinking"] == ["type": "enabled", "budget_tokens": 1024])
    }

    @Test func unknownToolsAndBadInputBecomeToolErrorsTheModelSees() async throws {
        let fixture = try SandboxFixture()
        let upstream = FakeUpstream([
            Self.toolTurn(id: "toolu_x", name: "delete_everything", inputJSON: #"{"path":"/"}"#),
            Self.toolTurn(id: "toolu_y", name: "read_file", inputJSON: #"{"paht":"typo"}"#),
            FakeUpstream.message(["Recovered."]),
        ])
        let (events, end) = try await StreamEngineTests().collect(
            try engine(upstream, fixture: fixture).start(Self.request, caller: "a", deadline: nil))
        #expect(end == nil)
        let errors = events.filter { $0["type"] == "tool_error" }.compactMap { $0["error"]?.stringValue }
        #expect(errors.count == 2)
        #expect(errors[0].contains("unknown tool 'delete_everything'"))
        #expect(errors[1].contains("unknown input 'paht'") || errors[1].contains("missing required input 'path'"))
        let third = try JSONValue(parsing: upstream.requests.withLock { $0[2] })
        #expect(third["messages"]?.arrayValue?.last?["content"]?.arrayValue?.first?["is_error"] == true)
    }

    @Test func theLoopStopsAtMaxTurns() async throws {
        let fixture = try SandboxFixture()
        let turn = Self.toolTurn(id: "toolu_1", name: "read_file", inputJSON: #"{"path":"hello.txt"}"#)
        let upstream = FakeUpstream([turn, turn, turn])
        let (events, end) = try await StreamEngineTests().collect(
            try engine(upstream, fixture: fixture, maxTurns: 2).start(Self.request, caller: "a", deadline: nil))
        #expect(end?.code == .resourceExhausted)
        #expect(end?.message.contains("turn limit (2 per stream)") == true)
        #expect(events.last?["type"] == "stream_error")
        #expect(upstream.requests.withLock { $0.count } == 2)
    }

    @Test func requestsNamingUnknownServerToolsAreRejected() throws {
        let fixture = try SandboxFixture()
        let request = try SendMessageRequest(
            json: Array(#"{"model":"m","max_tokens":1,"tools":["rm_rf"],"messages":[{"role":"user","content":"x"}]}"#.utf8))
        #expect(throws: RPCError.self) { try engine(FakeUpstream([]), fixture: fixture).start(request, caller: "a", deadline: nil) }
    }
}
