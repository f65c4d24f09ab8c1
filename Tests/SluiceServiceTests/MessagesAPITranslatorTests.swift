import SluiceService
import SluiceWire
import Testing

/// Sluice events → the Messages API's SSE events and final Message, without a server.
@Suite struct MessagesAPITranslatorTests {
    /// Runs `events` through a translator; returns every SSE event as `name index? deltaType|blockType` lines and the outcome.
    static func run(_ events: [(String, JSONValue)]) -> (
        lines: [String], events: [MessagesAPITranslator.Event], outcome: MessagesAPITranslator.Outcome?
    ) {
        var translator = MessagesAPITranslator(model: "claude-sim-1")
        var out: [MessagesAPITranslator.Event] = []
        var outcome: MessagesAPITranslator.Outcome?
        for (type, frame) in events {
            let step = translator.translate(type: type, frame: frame)
            out += step.events
            if let stepOutcome = step.outcome { outcome = stepOutcome }
        }
        let lines = out.map { event -> String in
            var line = event.name
            if let index = event.data["index"]?.intValue { line += " \(index)" }
            if let type = event.data["delta"]?["type"]?.stringValue ?? event.data["content_block"]?["type"]?.stringValue {
                line += " \(type)"
            }
            return line
        }
        return (lines, out, outcome)
    }

    static let start: (String, JSONValue) = ("message_start", ["id": "msg_1", "role": "assistant", "model": "claude-sim-1"])
    static func text(_ delta: String) -> (String, JSONValue) { ("message_delta", ["id": "msg_1", "delta": .string(delta)]) }
    static func stop(_ reason: String) -> (String, JSONValue) {
        ("message_stop", ["id": "msg_1", "stop_reason": .string(reason), "stop_sequence": nil])
    }
    static let complete: (String, JSONValue) = (
        "stream_complete",
        [
            "usage": ["input_tokens": 12, "output_tokens": 7, "cache_read_input_tokens": 3],
            "message": ["content": [["type": "text", "text": "Hello"]]],
        ]
    )

    @Test func textStreamHasOneBlockAndTheUsageInMessageDelta() throws {
        let result = Self.run([Self.start, Self.text("Hel"), Self.text("lo"), Self.stop("end_turn"), Self.complete])
        #expect(
            result.lines == [
                "message_start", "content_block_start 0 text", "content_block_delta 0 text_delta", "content_block_delta 0 text_delta",
                "content_block_stop 0", "message_delta", "message_stop",
            ])
        let messageDelta = try #require(result.events.first { $0.name == "message_delta" })
        #expect(messageDelta.data["delta"]?["stop_reason"] == "end_turn")
        #expect(messageDelta.data["usage"]?["cache_read_input_tokens"]?.intValue == 3)
        #expect(result.events[0].data["message"]?["id"] == "msg_1")
        #expect(result.events[0].data["message"]?["content"] == [])
        guard case .message(let message)? = result.outcome else {
            Issue.record("expected the message, got \(String(describing: result.outcome))")
            return
        }
        #expect(message["content"] == [["type": "text", "text": "Hello"]])
        #expect(message["stop_reason"] == "end_turn")
        #expect(message["usage"]?["input_tokens"]?.intValue == 12)
        #expect(message["type"] == "message")
    }

    @Test func thinkingTextAndToolCallGetConsecutiveIndices() {
        let result = Self.run([
            Self.start,
            ("thinking_delta", ["id": "msg_1", "delta": "Hmm"]),
            ("thinking_signature", ["id": "msg_1", "signature": "Eq=="]),
            Self.text("Calling."),
            ("tool_call_delta", ["id": "msg_1", "tool_use_id": "toolu_1", "name": "get_weather", "partial_json": ""]),
            ("tool_call_delta", ["id": "msg_1", "tool_use_id": "toolu_1", "name": "get_weather", "partial_json": "{\"city\":"]),
            ("tool_call_delta", ["id": "msg_1", "tool_use_id": "toolu_1", "name": "get_weather", "partial_json": "\"Paris\"}"]),
            ("tool_call", ["id": "msg_1", "tool_use_id": "toolu_1", "name": "get_weather", "input": ["city": "Paris"]]),
            ("tool_call_delta", ["id": "msg_1", "tool_use_id": "toolu_2", "name": "get_time", "partial_json": "{}"]),
            ("tool_call", ["id": "msg_1", "tool_use_id": "toolu_2", "name": "get_time", "input": [:]]),
            Self.stop("tool_use"), Self.complete,
        ])
        #expect(
            result.lines == [
                "message_start",
                "content_block_start 0 thinking", "content_block_delta 0 thinking_delta", "content_block_delta 0 signature_delta",
                "content_block_stop 0",
                "content_block_start 1 text", "content_block_delta 1 text_delta", "content_block_stop 1",
                "content_block_start 2 tool_use", "content_block_delta 2 input_json_delta", "content_block_delta 2 input_json_delta",
                "content_block_delta 2 input_json_delta", "content_block_stop 2",
                "content_block_start 3 tool_use", "content_block_delta 3 input_json_delta", "content_block_stop 3",
                "message_delta", "message_stop",
            ])
        let toolStart = result.events.first { $0.data["content_block"]?["id"] == "toolu_1" }
        #expect(toolStart?.data["content_block"] == ["type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": [:]])
    }

    @Test func serverToolBlocksArriveWholeAndCitationsStartTheirTextBlock() {
        let search: JSONValue = ["type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": ["query": "rivers"]]
        let results: JSONValue = ["type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []]
        let result = Self.run([
            Self.start,
            ("content_block", ["id": "msg_1", "index": 0, "block": search]),
            ("content_block", ["id": "msg_1", "index": 1, "block": results]),
            ("citation", ["id": "msg_1", "citation": ["type": "web_search_result_location", "url": "https://example.com"]]),
            Self.text("Rivers flow."),
            ("citation", ["id": "msg_1", "citation": ["type": "web_search_result_location", "url": "https://example.org"]]),
            Self.text("Seas stay."),
            Self.stop("end_turn"), Self.complete,
        ])
        #expect(
            result.lines == [
                "message_start",
                "content_block_start 0 server_tool_use", "content_block_stop 0",
                "content_block_start 1 web_search_tool_result", "content_block_stop 1",
                "content_block_start 2 text", "content_block_delta 2 citations_delta", "content_block_delta 2 text_delta",
                "content_block_stop 2",
                "content_block_start 3 text", "content_block_delta 3 citations_delta", "content_block_delta 3 text_delta",
                "content_block_stop 3",
                "message_delta", "message_stop",
            ])
        #expect(result.events[1].data["content_block"] == search)
    }

    @Test func continuationIsInvisibleAndTheTextBlockGoesOn() {
        let result = Self.run([
            Self.start, Self.text("Hel"),
            ("upstream_retry", ["attempt": 1, "reason": "stream_ended_early", "delay_ms": 10, "mode": "continue"]),
            Self.text("lo"), Self.stop("end_turn"), Self.complete,
        ])
        #expect(
            result.lines == [
                "message_start", "content_block_start 0 text", "content_block_delta 0 text_delta", "content_block_delta 0 text_delta",
                "content_block_stop 0", "message_delta", "message_stop",
            ])
    }

    @Test func restartBeforeContentIsInvisible() {
        let result = Self.run([
            Self.start,
            ("upstream_retry", ["attempt": 1, "reason": "http_status 529", "delay_ms": 10, "mode": "transparent"]),
            ("message_restart", ["id": "msg_1", "reason": "x"]),
            Self.text("Hello"), Self.stop("end_turn"), Self.complete,
        ])
        #expect(result.lines.first == "message_start")
        #expect(result.lines.filter { $0 == "message_start" }.count == 1)
        #expect(result.lines.contains("content_block_start 0 text"))
        #expect(result.lines.last == "message_stop")
    }

    @Test func restartAfterContentEndsWithAnOverloadedError() {
        let result = Self.run([
            Self.start, ("thinking_delta", ["id": "msg_1", "delta": "Hmm"]),
            ("upstream_retry", ["attempt": 1, "reason": "stream_ended_early", "delay_ms": 10, "mode": "restart"]),
            ("message_restart", ["id": "msg_1", "reason": "stream_ended_early"]),
            ("thinking_delta", ["id": "msg_1", "delta": "Hmm"]),
        ])
        #expect(result.lines == ["message_start", "content_block_start 0 thinking", "content_block_delta 0 thinking_delta", "error"])
        #expect(result.events.last?.data["error"]?["type"] == "overloaded_error")
        guard case .restartedAfterContent(let error)? = result.outcome else {
            Issue.record("expected a visible restart, got \(String(describing: result.outcome))")
            return
        }
        #expect(error.status == 529)
    }

    @Test func laterTurnsContinueTheFirstMessage() {
        let result = Self.run([
            Self.start, Self.text("Reading."), Self.stop("tool_use"),
            ("message_start", ["id": "msg_2", "role": "assistant", "model": "claude-sim-1"]),
            Self.text("Done."), Self.stop("end_turn"), Self.complete,
        ])
        #expect(result.lines.filter { $0 == "message_start" }.count == 1)
        #expect(result.lines.contains("content_block_start 1 text"))
        #expect(result.events.first { $0.name == "message_delta" }?.data["delta"]?["stop_reason"] == "end_turn")
    }

    /// Sluice's server tools (`--messages-server-tools`): a `server_tool_use` block and its `<name>_tool_result`, whole,
    /// between the turns' text; the non-streaming Message holds every turn's blocks.
    @Test func serverToolCallsAreServerToolBlocksAndTheMessageHoldsEveryTurn() {
        let result = Self.run([
            Self.start, Self.text("Reading."), Self.stop("tool_use"),
            ("tool_start", ["id": "toolu_1", "name": "read_file", "input": ["path": "notes.txt"]]),
            ("tool_start", ["id": "toolu_2", "name": "list_directory", "input": ["path": "missing"]]),
            ("tool_progress", ["id": "toolu_1", "message": "reading notes.txt", "percentage": 0]),
            ("tool_error", ["id": "toolu_2", "error": "cannot open missing: No such file or directory"]),
            ("tool_complete", ["id": "toolu_1", "output": ["path": "notes.txt", "content": "hello"]]),
            ("message_start", ["id": "msg_2", "role": "assistant", "model": "claude-sim-1"]),
            Self.text("Done."), Self.stop("end_turn"),
            (
                "stream_complete",
                ["usage": ["input_tokens": 30, "output_tokens": 9], "message": ["content": [["type": "text", "text": "Done."]]]]
            ),
        ])
        #expect(
            result.lines == [
                "message_start", "content_block_start 0 text", "content_block_delta 0 text_delta", "content_block_stop 0",
                "content_block_start 1 server_tool_use", "content_block_stop 1",
                "content_block_start 2 server_tool_use", "content_block_stop 2",
                "content_block_start 3 list_directory_tool_result", "content_block_stop 3",
                "content_block_start 4 read_file_tool_result", "content_block_stop 4",
                "content_block_start 5 text", "content_block_delta 5 text_delta", "content_block_stop 5",
                "message_delta", "message_stop",
            ])
        let use: JSONValue = ["type": "server_tool_use", "id": "toolu_1", "name": "read_file", "input": ["path": "notes.txt"]]
        let failed: JSONValue = [
            "type": "list_directory_tool_result", "tool_use_id": "toolu_2",
            "content": [
                "type": "list_directory_tool_result_error", "error_code": "execution_error",
                "error_message": "cannot open missing: No such file or directory",
            ],
        ]
        let read: JSONValue = [
            "type": "read_file_tool_result", "tool_use_id": "toolu_1",
            "content": ["type": "read_file_result", "path": "notes.txt", "content": "hello"],
        ]
        #expect(result.events[4].data["content_block"] == use)
        guard case .message(let message)? = result.outcome else {
            Issue.record("expected the message, got \(String(describing: result.outcome))")
            return
        }
        let content = message["content"]?.arrayValue ?? []
        #expect(content.count == 6)
        #expect(content.first == ["type": "text", "text": "Reading."])
        #expect(content[1] == use)
        #expect(content[3] == failed)
        #expect(content[4] == read)
        #expect(content.last == ["type": "text", "text": "Done."])
        #expect(message["stop_reason"] == "end_turn")
    }

    @Test func restartOfALaterTurnBeforeItsContentIsInvisible() {
        let result = Self.run([
            Self.start, Self.text("Reading."), Self.stop("tool_use"),
            ("tool_start", ["id": "toolu_1", "name": "read_file", "input": ["path": "notes.txt"]]),
            ("tool_complete", ["id": "toolu_1", "output": ["content": "hello"]]),
            ("message_start", ["id": "msg_2", "role": "assistant", "model": "claude-sim-1"]),
            ("upstream_retry", ["attempt": 1, "reason": "http_status 529", "delay_ms": 10, "mode": "transparent"]),
            ("message_restart", ["id": "msg_2", "reason": "http_status 529"]),
            Self.text("Done."), Self.stop("end_turn"), Self.complete,
        ])
        #expect(!result.lines.contains("error"))
        #expect(result.lines.contains("content_block_start 3 text"))
        #expect(result.lines.last == "message_stop")
    }

    @Test func thinkingAndCitedTextOfAnEarlierTurnAreKeptWhole() {
        let citation: JSONValue = ["type": "char_location", "cited_text": "hello"]
        let result = Self.run([
            Self.start, ("thinking_delta", ["id": "msg_1", "delta": "Hm"]), ("thinking_delta", ["id": "msg_1", "delta": "m"]),
            ("thinking_signature", ["id": "msg_1", "signature": "Eq=="]),
            ("citation", ["id": "msg_1", "citation": citation]), Self.text("Per the notes"), Self.stop("tool_use"),
            ("tool_start", ["id": "toolu_1", "name": "read_file", "input": [:]]),
            ("tool_complete", ["id": "toolu_1", "output": ["content": "hello"]]),
            ("message_start", ["id": "msg_2", "role": "assistant", "model": "claude-sim-1"]),
            Self.text("Hello"), Self.stop("end_turn"), Self.complete,
        ])
        guard case .message(let message)? = result.outcome else {
            Issue.record("expected the message, got \(String(describing: result.outcome))")
            return
        }
        let content = message["content"]?.arrayValue ?? []
        #expect(content.first == ["type": "thinking", "thinking": "Hmm", "signature": "Eq=="])
        #expect(content.dropFirst().first == ["type": "text", "text": "Per the notes", "citations": [citation]])
        #expect(content.last == ["type": "text", "text": "Hello"])
        #expect(content.count == 5)
    }

    @Test func streamErrorsBecomeTheAPIsErrors() {
        let result = Self.run([
            Self.start,
            ("stream_error", ["error": "the upstream failed after 3 attempts", "details": ["code": "UNAVAILABLE"]]),
        ])
        #expect(result.lines == ["message_start", "error"])
        #expect(
            result.events.last?.data == [
                "type": "error", "error": ["type": "overloaded_error", "message": "the upstream failed after 3 attempts"],
            ])
        #expect(
            result.outcome
                == .failed(MessagesAPIError(status: 529, type: "overloaded_error", message: "the upstream failed after 3 attempts")))
    }

    @Test(arguments: [
        (StatusCode.invalidArgument, 400, "invalid_request_error"), (.unauthenticated, 401, "authentication_error"),
        (.permissionDenied, 403, "permission_error"), (.notFound, 404, "not_found_error"), (.resourceExhausted, 429, "rate_limit_error"),
        (.unavailable, 529, "overloaded_error"), (.deadlineExceeded, 504, "timeout_error"), (.internal, 500, "api_error"),
        (.unknown, 500, "api_error"),
    ])
    func errorTable(code: StatusCode, status: Int, type: String) {
        let error = MessagesAPIError(RPCError(code, "why"))
        #expect(error.status == status)
        #expect(error.type == type)
        #expect(error.body == ["type": "error", "error": ["type": .string(type), "message": "why"]])
        #expect(error.headers.contains { $0 == ("retry-after", "1") } == (status == 429))
    }

    @Test func eventsAreEncodedAsTheAPIsSSE() {
        let event = MessagesAPITranslator.ping
        #expect(String(decoding: event.encoded, as: UTF8.self) == "event: ping\ndata: {\"type\":\"ping\"}\n\n")
    }
}
