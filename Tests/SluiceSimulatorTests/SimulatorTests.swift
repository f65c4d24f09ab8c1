import Foundation
import Logging
import SluiceIO
import SluiceTransport
import SluiceUpstream
import SluiceWire
import Testing

@testable import SluiceSimulator

/// The Anthropic simulator served in-process over h2c and fetched with `curl --http2-prior-knowledge`; its
/// streams are decoded with SSEParser + AnthropicEvent and rebuilt with MessageAccumulator.
@Suite struct SimulatorTests {
    // MARK: Harness

    struct Fetched {
        var exitCode: Int32
        var status: Int
        var headers: [String: String]
        var body: [UInt8]

        var text: String { String(decoding: body, as: UTF8.self) }
        var json: JSONValue? { try? JSONValue(parsing: body) }

        func events() throws -> [AnthropicEvent] {
            var parser = SSEParser()
            return try parser.feed(body).map { try AnthropicEvent.decode($0) }
        }

        func sseEvents() throws -> [SSEEvent] {
            var parser = SSEParser()
            return try parser.feed(body)
        }

        func accumulated() throws -> MessageAccumulator {
            var accumulator = MessageAccumulator()
            for event in try events() { accumulator.apply(event) }
            return accumulator
        }
    }

    /// Servers are kept alive until the process exits: `shutdown` returns before the event-loop threads have
    /// finished their last iteration, which still reads the server's loop contexts (`[unowned context]`).
    static let retiredServers = LockedValue<[HTTP2Server]>([])

    /// Runs `body` against a fresh simulator on a free port.
    static func withSimulator<T>(_ body: (AnthropicSimulator, Int) async throws -> T) async throws -> T {
        let simulator = AnthropicSimulator()
        var router = RPCRouter()
        simulator.register(in: &router)
        var configuration = HTTP2ServerConfiguration()
        configuration.port = 0
        configuration.eventLoops = 1
        let server = try HTTP2Server(configuration: configuration, router: router, logger: Logger(label: "test.simulator"))
        try server.start()
        defer { retiredServers.withLock { $0.append(server) } }
        do {
            let result = try await body(simulator, server.port)
            await server.shutdown(drainTimeout: .milliseconds(200))
            return result
        } catch {
            await server.shutdown(drainTimeout: .milliseconds(200))
            throw error
        }
    }

    /// `curl --http2-prior-knowledge -sN -i` on a dispatch thread (never blocking the cooperative pool, which
    /// serves the simulator's handlers).
    static func fetch(
        port: Int, body: String, scenario: String? = nil, method: String = "POST", extraArguments: [String] = []
    ) async throws -> Fetched {
        var arguments = [
            "--http2-prior-knowledge", "-sN", "-X", method, "--max-time", "20",
            "-H", "content-type: application/json", "-H", "x-api-key: test", "--data-raw", body,
        ]
        if let scenario { arguments += ["-H", "sluice-simulation: \(scenario)"] }
        arguments += extraArguments
        arguments.append("http://127.0.0.1:\(port)/v1/messages")
        // Files rather than pipes: FileHandle's pipe I/O traps on EINTR. (And no Data.write: it fsyncs.)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-simulator-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let outputURL = directory.appendingPathComponent("response")
        let headURL = directory.appendingPathComponent("head")
        let curlArguments = arguments + ["-o", outputURL.path, "-D", headURL.path]
        // A termination handler, not waitUntilExit: blocking dispatch's global queue starves the cooperative
        // pool that runs the simulator's handlers (both are as wide as the CPU count on Linux).
        let exitCode = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Int32, Error>) in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["curl"] + curlArguments
            process.standardInput = FileHandle.nullDevice
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            process.terminationHandler = { process in continuation.resume(returning: process.terminationStatus) }
            do {
                try process.run()
            } catch {
                continuation.resume(throwing: error)
            }
        }
        let payload = [UInt8]((try? Data(contentsOf: outputURL)) ?? Data())
        // "HTTP/2 200 \r\nname: value\r\n\r\n", then any trailers.
        let head = String(decoding: (try? Data(contentsOf: headURL)) ?? Data(), as: UTF8.self).components(separatedBy: "\r\n")
        let status = head.first.flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") } ?? 0
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return Fetched(exitCode: exitCode, status: status, headers: headers, body: payload)
    }

    static func requestBody(
        messages: JSONValue = [["role": "user", "content": "Tell me about streams."]], stream: Bool,
        maxTokens: Int = 1024, extra: [String: JSONValue] = [:]
    ) -> String {
        var object: [String: JSONValue] = [
            "model": "claude-sim-1", "max_tokens": .integer(maxTokens), "messages": messages, "stream": .bool(stream),
        ]
        object.merge(extra) { _, new in new }
        return JSONValue.object(object).serializedString
    }

    /// Polls until `condition` holds (stream bookkeeping happens when the handler's task ends).
    static func eventually(_ condition: () -> Bool) async -> Bool {
        for _ in 0..<200 {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition()
    }

    // MARK: Streaming and non-streaming agree

    @Test func streamedMessageEqualsTheNonStreamedOne() async throws {
        try await Self.withSimulator { simulator, port in
            let scenario = #"{"seed":42,"output_tokens":120}"#
            let streamed = try await Self.fetch(port: port, body: Self.requestBody(stream: true), scenario: scenario)
            #expect(streamed.exitCode == 0)
            #expect(streamed.status == 200)
            #expect(streamed.headers["content-type"] == "text/event-stream; charset=utf-8")
            #expect(streamed.headers["request-id"]?.hasPrefix("req_") == true)
            let accumulator = try streamed.accumulated()
            #expect(accumulator.isComplete)

            let whole = try await Self.fetch(port: port, body: Self.requestBody(stream: false), scenario: scenario)
            #expect(whole.status == 200)
            #expect(whole.headers["content-type"] == "application/json")
            #expect(whole.headers["request-id"]?.hasPrefix("req_") == true)
            #expect(whole.headers["request-id"] != streamed.headers["request-id"])
            let json = try #require(whole.json)
            #expect(accumulator.jsonValue == json)

            let message = accumulator.message()
            #expect(message.id.hasPrefix("msg_01"))
            #expect(message.model == "claude-sim-1")
            #expect(message.stopReason == "end_turn")
            guard case .text(let text, _)? = message.content.first else {
                Issue.record("no text block")
                return
            }
            #expect(text.count > 200)
            // Roughly output_tokens tokens (a closing fence may be added, trailing whitespace trimmed).
            #expect((115...123).contains(message.usage.outputTokens ?? 0))
            #expect((message.usage.inputTokens ?? 0) > 0)
            #expect(await Self.eventually { simulator.activeStreams == 0 })
            #expect(simulator.abortedStreams == 0)
        }
    }

    @Test func streamHasTheDocumentedShape() async throws {
        try await Self.withSimulator { _, port in
            let fetched = try await Self.fetch(
                port: port, body: Self.requestBody(stream: true), scenario: #"{"seed":7,"output_tokens":30}"#)
            let text = fetched.text
            #expect(text.hasPrefix("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01"))
            #expect(text.contains("\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":"))
            #expect(text.hasSuffix("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"))
            let names = try fetched.sseEvents().map(\.event)
            #expect(names.prefix(3) == ["message_start", "ping", "content_block_start"])
            #expect(names.suffix(3) == ["content_block_stop", "message_delta", "message_stop"])
            #expect(
                Set(names) == [
                    "message_start", "ping", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
                    "message_stop",
                ])
            let events = try fetched.events()
            guard case .messageDelta(let stopReason, let stopSequence, let usage)? = events.dropLast().last else {
                Issue.record("no message_delta before message_stop")
                return
            }
            #expect(stopReason == "end_turn")
            #expect(stopSequence == nil)
            // Each delta carries one to three tokens.
            let deltas = events.compactMap { event -> String? in
                if case .contentBlockDelta(0, .text(let text)) = event { text } else { nil }
            }
            #expect(deltas.count >= 10 && deltas.count <= usage.outputTokens!)
        }
    }

    @Test func deterministicPerSeedAndConversation() async throws {
        try await Self.withSimulator { _, port in
            func text(_ scenario: String, _ question: String = "Hi") async throws -> String {
                let body = Self.requestBody(messages: [["role": "user", "content": .string(question)]], stream: false)
                let json = try #require(try await Self.fetch(port: port, body: body, scenario: scenario).json)
                return json.serializedString
            }
            let a = try await text(#"{"seed":1}"#)
            #expect(try await text(#"{"seed":1}"#) == a)
            #expect(try await text(#"{"seed":2}"#) != a)
            #expect(try await text(#"{"seed":1}"#, "Hello") != a)
        }
        // And without a server: the generator alone, for many seeds, is reproducible and well-formed.
        for seed in UInt64(0)..<200 {
            var first = SimulatorRandom(seed: seed)
            var second = SimulatorRandom(seed: seed)
            let tokens = SimulatorText.prose(tokens: 80, random: &first)
            #expect(tokens == SimulatorText.prose(tokens: 80, random: &second))
            #expect(tokens.allSatisfy { !$0.isEmpty })
            let text = tokens.joined()
            #expect(text.components(separatedBy: "```").count % 2 == 1, "unbalanced code fence for seed \(seed)")
            #expect(text.last.map { !$0.isWhitespace } ?? false)
        }
    }

    @Test func maxTokensCapsTheOutput() async throws {
        try await Self.withSimulator { _, port in
            let body = Self.requestBody(stream: true, maxTokens: 10)
            let message = try await Self.fetch(port: port, body: body, scenario: #"{"output_tokens":100}"#).accumulated().message()
            #expect(message.stopReason == "max_tokens")
            #expect(message.usage.outputTokens == 10)
        }
    }

    @Test func stopSequencesCutTheText() async throws {
        try await Self.withSimulator { _, port in
            let full = try #require(try await Self.fetch(port: port, body: Self.requestBody(stream: false), scenario: #"{"seed":3}"#).json)
            let text = try #require(full["content"]?.arrayValue?.first?["text"]?.stringValue)
            // A stop sequence taken from the middle of the text.
            let words = text.split(separator: " ")
            let sequence = String(words[words.count / 2])
            let body = Self.requestBody(stream: true, extra: ["stop_sequences": [.string(sequence)]])
            let message = try await Self.fetch(port: port, body: body, scenario: #"{"seed":3}"#).accumulated().message()
            #expect(message.stopReason == "stop_sequence")
            #expect(message.stopSequence == sequence)
            guard case .text(let cut, _)? = message.content.first else {
                Issue.record("no text")
                return
            }
            #expect(text.hasPrefix(cut) && !cut.contains(sequence))
            #expect(text.utf8.dropFirst(cut.utf8.count).starts(with: sequence.utf8))
        }
    }

    // MARK: Prefill

    @Test func prefillContinuesExactlyAtAnySplitPoint() async throws {
        try await Self.withSimulator { _, port in
            let question: JSONValue = ["role": "user", "content": "Explain resumption."]
            // A seed whose text contains non-ASCII words, to split inside multi-byte and multi-scalar characters.
            var scenario = ""
            var full = ""
            for seed in 0..<40 {
                scenario = #"{"seed":\#(seed),"output_tokens":60}"#
                let json = try #require(
                    try await Self.fetch(port: port, body: Self.requestBody(messages: [question], stream: false), scenario: scenario).json)
                full = try #require(json["content"]?.arrayValue?.first?["text"]?.stringValue)
                if full.unicodeScalars.contains(where: { $0.value > 0x7F }) { break }
            }
            #expect(full.unicodeScalars.contains(where: { $0.value > 0x7F }))
            let scalars = Array(full.unicodeScalars)
            var splits = Set([1, 2, 3, scalars.count / 3, scalars.count / 2, scalars.count - 2, scalars.count - 1])
            // Right after every non-ASCII scalar, and right before it.
            for (index, scalar) in scalars.enumerated() where scalar.value > 0x7F {
                splits.insert(index)
                splits.insert(index + 1)
            }
            for split in splits.sorted() where split > 0 && split < scalars.count {
                let prefix = String(String.UnicodeScalarView(scalars[..<split]))
                let messages: JSONValue = [question, ["role": "assistant", "content": .string(prefix)]]
                let stream = split.isMultiple(of: 2)
                let fetched = try await Self.fetch(
                    port: port, body: Self.requestBody(messages: messages, stream: stream), scenario: scenario)
                #expect(fetched.headers["sluice-simulation-prefill"] == "continued")
                let json = try stream ? try fetched.accumulated().jsonValue : #require(fetched.json)
                let rest = json["content"]?.arrayValue?.first?["text"]?.stringValue ?? ""
                #expect(Array((prefix + rest).utf8) == Array(full.utf8), "split at scalar \(split)")
                #expect(json["stop_reason"] == "end_turn")
            }
            // Prefill as content blocks works the same way.
            let blocks: JSONValue = [
                question, ["role": "assistant", "content": [["type": "text", "text": .string(String(full.prefix(10)))]]],
            ]
            let fetched = try await Self.fetch(port: port, body: Self.requestBody(messages: blocks, stream: true), scenario: scenario)
            guard case .text(let rest, _)? = try fetched.accumulated().message().content.first else {
                Issue.record("no text")
                return
            }
            #expect(String(full.prefix(10)) + rest == full)

            // The whole text as prefill: nothing left to say.
            let all: JSONValue = [question, ["role": "assistant", "content": .string(full)]]
            let done = try #require(
                try await Self.fetch(port: port, body: Self.requestBody(messages: all, stream: false), scenario: scenario).json)
            #expect(done["content"] == [])
            #expect(done["stop_reason"] == "end_turn")

            // A prefill that isn't a prefix: the whole text follows.
            let other: JSONValue = [question, ["role": "assistant", "content": "Something else entirely"]]
            let mismatch = try await Self.fetch(port: port, body: Self.requestBody(messages: other, stream: false), scenario: scenario)
            #expect(mismatch.headers["sluice-simulation-prefill"] == "mismatch")
            #expect(mismatch.json?["content"]?.arrayValue?.first?["text"]?.stringValue == full)
        }
    }

    @Test func prefillPolicies() async throws {
        try await Self.withSimulator { _, port in
            let messages: JSONValue = [["role": "user", "content": "Hi"], ["role": "assistant", "content": "Well "]]
            let rejected = try await Self.fetch(
                port: port, body: Self.requestBody(messages: messages, stream: true), scenario: #"{"prefill":"reject"}"#)
            #expect(rejected.status == 400)
            #expect(rejected.json?["error"]?["message"]?.stringValue?.contains("must end with a user message") == true)
            let whitespace = try await Self.fetch(
                port: port, body: Self.requestBody(messages: messages, stream: true), scenario: #"{"prefill":"reject_trailing_whitespace"}"#
            )
            #expect(whitespace.status == 400)
            #expect(whitespace.json?["error"]?["message"]?.stringValue?.contains("trailing whitespace") == true)
        }
    }

    // MARK: Tools

    static let tools: JSONValue = [
        [
            "name": "get_weather", "description": "Weather for a city",
            "input_schema": ["type": "object", "properties": ["city": ["type": "string"]]],
        ]
    ]
    static let toolScenario =
        #"{"seed":5,"tool_calls":[{"name":"get_weather","input":{"city":"São Paulo","days":3,"units":{"temp":"celsius"}}},{"name":"get_time","input":{}}]}"#

    @Test func toolUseTurn() async throws {
        try await Self.withSimulator { _, port in
            let body = Self.requestBody(stream: true, extra: ["tools": Self.tools])
            let streamed = try await Self.fetch(port: port, body: body, scenario: Self.toolScenario)
            let events = try streamed.events()
            let accumulator = try streamed.accumulated()
            let message = accumulator.message()
            #expect(message.stopReason == "tool_use")
            #expect(message.content.count == 3)
            guard case .text(let preamble, _)? = message.content.first,
                case .toolUse(let id, "get_weather", .parsed(let input))? = message.content.dropFirst().first,
                case .toolUse(let secondID, "get_time", .parsed(let secondInput))? = message.content.last
            else {
                Issue.record("unexpected content \(message.content)")
                return
            }
            #expect(preamble.contains("`get_weather`"))
            #expect(id.hasPrefix("toolu_01") && secondID.hasPrefix("toolu_01") && id != secondID)
            #expect(input == ["city": "São Paulo", "days": 3, "units": ["temp": "celsius"]])
            #expect(secondInput == [:])
            // content_block_start carries an empty input; the first fragment is empty; fragments split the JSON.
            var fragments: [String] = []
            for event in events {
                if case .contentBlockDelta(1, .inputJSON(let fragment)) = event { fragments.append(fragment) }
            }
            #expect(fragments.first == "")
            #expect(fragments.count > 3)
            #expect(fragments.joined() == input.serializedString)
            #expect(streamed.text.contains(#""content_block":{"type":"tool_use","id":"\#(id)","name":"get_weather","input":{}}"#))

            let whole = try await Self.fetch(
                port: port, body: Self.requestBody(stream: false, extra: ["tools": Self.tools]), scenario: Self.toolScenario)
            #expect(whole.json == accumulator.jsonValue)

            // Without tools in the request, tool_calls are ignored.
            let plain = try await Self.fetch(port: port, body: Self.requestBody(stream: false), scenario: Self.toolScenario)
            #expect(plain.json?["stop_reason"] == "end_turn")
        }
    }

    @Test func toolResultsAreQuoted() async throws {
        try await Self.withSimulator { _, port in
            let long = String(repeating: "0123456789", count: 30)
            let messages: JSONValue = [
                ["role": "user", "content": "Weather?"],
                [
                    "role": "assistant",
                    "content": [
                        ["type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": ["city": "Oslo"]],
                        ["type": "tool_use", "id": "toolu_B", "name": "get_time", "input": [:]],
                    ],
                ],
                [
                    "role": "user",
                    "content": [
                        ["type": "tool_result", "tool_use_id": "toolu_A", "content": "Sunny, 21 °C — light wind"],
                        ["type": "tool_result", "tool_use_id": "toolu_B", "content": [["type": "text", "text": .string(long)]]],
                    ],
                ],
            ]
            let body = Self.requestBody(messages: messages, stream: true, extra: ["tools": Self.tools])
            let streamed = try await Self.fetch(port: port, body: body, scenario: Self.toolScenario)
            let message = try streamed.accumulated().message()
            #expect(message.stopReason == "end_turn")
            guard case .text(let text, _)? = message.content.first, message.content.count == 1 else {
                Issue.record("unexpected content \(message.content)")
                return
            }
            #expect(text.contains("`get_weather` tool (toolu_A) returned: Sunny, 21 °C — light wind"))
            #expect(text.contains(String(long.prefix(200)) + "…"))
            #expect(!text.contains(String(long.prefix(201))))
            let whole = try await Self.fetch(
                port: port, body: Self.requestBody(messages: messages, stream: false, extra: ["tools": Self.tools]),
                scenario: Self.toolScenario)
            #expect(whole.json == (try streamed.accumulated().jsonValue))
        }
    }

    @Test func scriptedTextIsSentVerbatimAndContinuesAfterAPrefill() async throws {
        try await Self.withSimulator { _, port in
            let script = "# Title\n\n<img src=x onerror=alert(1)> and `code` — café\n\n```swift\nlet x = 1\n```"
            let scenario = JSONValue.object(["text": .string(script), "output_tokens": 3]).serializedString
            let message = try await Self.fetch(port: port, body: Self.requestBody(stream: true), scenario: scenario).accumulated().message()
            guard case .text(let text, _)? = message.content.first else {
                Issue.record("no text in \(message.content)")
                return
            }
            #expect(text == script)
            #expect(message.usage.outputTokens == SimulatorText.tokenize(script).count)

            let prefill = String(script.prefix(20))
            let messages: JSONValue = [
                ["role": "user", "content": "Tell me about streams."], ["role": "assistant", "content": .string(prefill)],
            ]
            let rest = try #require(
                try await Self.fetch(port: port, body: Self.requestBody(messages: messages, stream: false), scenario: scenario).json)
            #expect(rest["content"]?.arrayValue?.first?["text"]?.stringValue == String(script.dropFirst(20)))
        }
        #expect(throws: SimulationScenarioError.self) { try SimulationScenario(header: #"{"text":3}"#) }
    }

    // MARK: Validation

    @Test func invalidRequestsAreRejectedLikeTheAPI() async throws {
        try await Self.withSimulator { _, port in
            let cases: [(body: String, scenario: String?, message: String)] = [
                ("{not json", nil, "error parsing the body"),
                ("[]", nil, "JSON object"),
                (#"{"max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#, nil, "model: Field required"),
                (#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#, nil, "max_tokens: Field required"),
                (#"{"model":"m","max_tokens":5}"#, nil, "messages: Field required"),
                (#"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}"#, nil, "max_tokens"),
                (#"{"model":"m","max_tokens":5,"messages":[{"role":"robot","content":"x"}]}"#, nil, "messages.0.role"),
                (Self.requestBody(stream: true), "{bad", "sluice-simulation header is not valid JSON"),
                (Self.requestBody(stream: true), #"{"seeed":1}"#, "unknown field 'seeed'"),
                (Self.requestBody(stream: true), #"{"fault":{"kind":"explode"}}"#, "'fault.kind' must be"),
                (Self.requestBody(stream: true), #"{"output_tokens":-1}"#, "'output_tokens' must be an integer"),
                (Self.requestBody(stream: true), #"{"tool_calls":[{"input":{}}]}"#, "'tool_calls[0].name' is required"),
            ]
            for item in cases {
                let fetched = try await Self.fetch(port: port, body: item.body, scenario: item.scenario)
                #expect(fetched.status == 400, "\(item.body) \(item.scenario ?? "")")
                #expect(fetched.headers["request-id"]?.hasPrefix("req_") == true)
                let json = try #require(fetched.json)
                #expect(json["type"] == "error")
                #expect(json["error"]?["type"] == "invalid_request_error")
                #expect(json["request_id"]?.stringValue == fetched.headers["request-id"])
                let message = json["error"]?["message"]?.stringValue ?? ""
                #expect(message.contains(item.message), "\(message)")
            }
            let get = try await Self.fetch(port: port, body: "", method: "GET")
            #expect(get.status == 405)
        }
    }

    // MARK: Faults

    @Test func httpStatusFaultsForTheFirstAttemptsOnly() async throws {
        try await Self.withSimulator { simulator, port in
            let scenario = #"{"seed":9,"fault":{"kind":"http_status","status":429,"retry_after_s":3,"times":2}}"#
            for _ in 0..<2 {
                let failed = try await Self.fetch(port: port, body: Self.requestBody(stream: true), scenario: scenario)
                #expect(failed.status == 429)
                #expect(failed.headers["retry-after"] == "3")
                #expect(failed.json?["error"]?["type"] == "rate_limit_error")
            }
            let succeeded = try await Self.fetch(port: port, body: Self.requestBody(stream: true), scenario: scenario)
            #expect(succeeded.status == 200)
            #expect(try succeeded.accumulated().isComplete)
            // Another conversation is another scenario: it fails again.
            let other = Self.requestBody(messages: [["role": "user", "content": "Other"]], stream: true)
            #expect(try await Self.fetch(port: port, body: other, scenario: scenario).status == 429)
            // Reset counters: fails again.
            simulator.resetAttempts()
            #expect(try await Self.fetch(port: port, body: Self.requestBody(stream: true), scenario: scenario).status == 429)

            for (status, type) in [
                (529, "overloaded_error"), (500, "api_error"), (401, "authentication_error"), (400, "invalid_request_error"),
            ] {
                let fetched = try await Self.fetch(
                    port: port, body: Self.requestBody(stream: false), scenario: #"{"fault":{"kind":"http_status","status":\#(status)}}"#)
                #expect(fetched.status == status)
                #expect(fetched.json?["error"]?["type"]?.stringValue == type)
                #expect(fetched.headers["retry-after"] == nil)
            }
        }
    }

    @Test func dropResetsTheStreamAfterNEventsThenResumes() async throws {
        try await Self.withSimulator { simulator, port in
            let scenario = #"{"seed":11,"output_tokens":80,"fault":{"kind":"drop","after_events":12,"times":1}}"#
            let dropped = try await Self.fetch(port: port, body: Self.requestBody(stream: true), scenario: scenario)
            #expect(dropped.exitCode != 0)  // curl reports the reset stream
            #expect(dropped.status == 200)
            let events = try dropped.sseEvents()
            #expect(events.count == 12)
            let partial = try dropped.accumulated()
            #expect(!partial.isComplete)
            guard case .text(let partialText, _)? = partial.message().content.first else {
                Issue.record("no partial text")
                return
            }
            // The next attempt, as a continuation from the partial text, succeeds and completes it exactly.
            let messages: JSONValue = [
                ["role": "user", "content": "Tell me about streams."], ["role": "assistant", "content": .string(partialText)],
            ]
            let resumed = try await Self.fetch(port: port, body: Self.requestBody(messages: messages, stream: true), scenario: scenario)
            #expect(resumed.exitCode == 0)
            guard case .text(let rest, _)? = try resumed.accumulated().message().content.first else {
                Issue.record("no resumed text")
                return
            }
            let whole = try await Self.fetch(port: port, body: Self.requestBody(stream: false), scenario: scenario)
            #expect(whole.json?["content"]?.arrayValue?.first?["text"]?.stringValue == partialText + rest)
            #expect(await Self.eventually { simulator.activeStreams == 0 })
            #expect(simulator.abortedStreams == 0)  // a simulated drop is not the client going away
        }
    }

    @Test func errorEventEndsTheStream() async throws {
        try await Self.withSimulator { _, port in
            let fetched = try await Self.fetch(
                port: port, body: Self.requestBody(stream: true), scenario: #"{"fault":{"kind":"error_event","after_events":5}}"#)
            #expect(fetched.exitCode == 0)
            let events = try fetched.events()
            #expect(events.count == 6)
            #expect(events.last == .error(type: "overloaded_error", message: "Overloaded", requestID: nil))
            #expect(
                fetched.text.hasSuffix(
                    "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"))
        }
    }

    @Test func stallHoldsTheStreamUntilTheClientGoesAway() async throws {
        try await Self.withSimulator { simulator, port in
            let scenario = #"{"fault":{"kind":"stall","after_events":3,"keep_alive":true},"ping_interval_ms":50}"#
            let fetched = try await Self.fetch(
                port: port, body: Self.requestBody(stream: true), scenario: scenario, extraArguments: ["--max-time", "3"])
            #expect(fetched.exitCode == 28)  // curl's timeout
            let names = try fetched.sseEvents().map(\.event)
            #expect(names.prefix(3) == ["message_start", "ping", "content_block_start"])
            // Only pings after the stall, several of them.
            #expect(names.dropFirst(3).allSatisfy { $0 == "ping" })
            #expect(names.count >= 5)  // at least two pings (generous: a loaded machine may start curl late)
            #expect(await Self.eventually { simulator.activeStreams == 0 })
            #expect(simulator.abortedStreams == 1)

            let silent = try await Self.fetch(
                port: port, body: Self.requestBody(stream: true), scenario: #"{"fault":{"kind":"stall","after_events":2}}"#,
                extraArguments: ["--max-time", "2"])
            #expect(try silent.sseEvents().count == 2)
            #expect(await Self.eventually { simulator.activeStreams == 0 })
            #expect(simulator.abortedStreams == 2)
        }
    }

    @Test func pacingAndPeriodicPings() async throws {
        try await Self.withSimulator { simulator, port in
            let scenario = #"{"output_tokens":20,"token_interval_ms":15,"first_token_delay_ms":100,"ping_interval_ms":60}"#
            let start = ContinuousClock.now
            let fetched = try await Self.fetch(port: port, body: Self.requestBody(stream: true), scenario: scenario)
            let elapsed = ContinuousClock.now - start
            #expect(elapsed >= .milliseconds(100 + 15 * 18))
            let names = try fetched.sseEvents().map(\.event)
            #expect(names.filter { $0 == "ping" }.count >= 4)
            #expect(try fetched.accumulated().isComplete)

            // A client that goes away mid-stream is counted, and the handler stops.
            let slow = #"{"output_tokens":1000,"token_interval_ms":50}"#
            _ = try await Self.fetch(
                port: port, body: Self.requestBody(stream: true), scenario: slow, extraArguments: ["--max-time", "0.3"])
            #expect(await Self.eventually { simulator.activeStreams == 0 })
            #expect(simulator.abortedStreams == 1)
        }
    }

    @Test func stampedDeltasCarryTheSendTimeBeforeTheirText() throws {
        let data = #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hé \"x\""}}"#
        let before = Int64(Date().timeIntervalSince1970 * 1e9)
        let stamped = AnthropicSimulator.stamped(data)
        let text = try JSONValue(parsing: Array(stamped.utf8))["delta"]?["text"]?.stringValue ?? ""
        #expect(text.hasPrefix("@T") && text.hasSuffix(#";Hé "x""#))
        let nanoseconds = Int64(text.dropFirst(2).prefix { $0 != ";" }) ?? 0
        #expect(nanoseconds >= before && nanoseconds - before < 60 * 1_000_000_000)
        #expect(AnthropicSimulator.stamped(#"{"type":"ping"}"#) == #"{"type":"ping"}"#)
    }

    @Test func attemptTableIsBounded() {
        var table = AttemptTable(capacity: 100)
        for index in 0..<1000 {
            #expect(table.next(AttemptTable.Key(first: UInt64(index), second: 0, length: 0)) == 1)
            // A key kept in use survives eviction.
            #expect(table.next(AttemptTable.Key(first: 1_000_000, second: 0, length: 0)) == index + 1)
        }
        #expect(table.count <= 100)
    }
}
