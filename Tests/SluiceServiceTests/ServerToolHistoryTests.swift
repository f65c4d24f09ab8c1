import SluiceWire
import Testing

@testable import SluiceService

/// A conversation with Sluice's server tool blocks, sent back to `/v1/messages`, as the upstream gets it.
@Suite struct ServerToolHistoryTests {
    @Test func anAssistantMessageWithServerToolBlocksIsSplitAroundItsToolResults() {
        let question: JSONValue = ["role": "user", "content": "What do my notes say?"]
        let answer: JSONValue = [
            "role": "assistant",
            "content": [
                ["type": "text", "text": "Reading."],
                ["type": "server_tool_use", "id": "toolu_1", "name": "read_file", "input": ["path": "notes.txt"]],
                ["type": "server_tool_use", "id": "toolu_2", "name": "list_directory", "input": ["path": "missing"]],
                [
                    "type": "list_directory_tool_result", "tool_use_id": "toolu_2",
                    "content": [
                        "type": "list_directory_tool_result_error", "error_code": "execution_error", "error_message": "no such directory",
                    ],
                ],
                ["type": "read_file_tool_result", "tool_use_id": "toolu_1", "content": ["type": "read_file_result", "content": "hello"]],
                ["type": "text", "text": "They say hello."],
            ],
        ]
        let next: JSONValue = ["role": "user", "content": "Thanks."]
        let upstream = ServerToolHistory.upstreamMessages([question, answer, next])
        #expect(
            upstream == [
                question,
                [
                    "role": "assistant",
                    "content": [
                        ["type": "text", "text": "Reading."],
                        ["type": "tool_use", "id": "toolu_1", "name": "read_file", "input": ["path": "notes.txt"]],
                        ["type": "tool_use", "id": "toolu_2", "name": "list_directory", "input": ["path": "missing"]],
                    ],
                ],
                [
                    "role": "user",
                    "content": [
                        ["type": "tool_result", "tool_use_id": "toolu_2", "content": "no such directory", "is_error": true],
                        ["type": "tool_result", "tool_use_id": "toolu_1", "content": #"{"content":"hello"}"#],
                    ],
                ],
                ["role": "assistant", "content": [["type": "text", "text": "They say hello."]]],
                next,
            ])
    }

    @Test func callsWhoseResultsInterleavedAreOneTurn() {
        let answer: JSONValue = [
            "role": "assistant",
            "content": [
                ["type": "server_tool_use", "id": "toolu_1", "name": "read_file", "input": ["path": "a"]],
                ["type": "read_file_tool_result", "tool_use_id": "toolu_1", "content": ["type": "read_file_result", "content": "A"]],
                ["type": "server_tool_use", "id": "toolu_2", "name": "search_files", "input": ["path": ".", "pattern": "b"]],
                ["type": "search_files_tool_result", "tool_use_id": "toolu_2", "content": ["type": "search_files_result", "matches": []]],
            ],
        ]
        let upstream = ServerToolHistory.upstreamMessages([["role": "user", "content": "Go"], answer])
        #expect(upstream?.count == 3)
        #expect(upstream?[1]["content"]?.arrayValue?.map { $0["type"] } == ["tool_use", "tool_use"])
        #expect(upstream?[2]["content"]?.arrayValue?.map { $0["tool_use_id"] } == ["toolu_1", "toolu_2"])
    }

    @Test func aConversationWithoutThemIsLeftAlone() {
        let hosted: JSONValue = [
            "role": "assistant",
            "content": [
                ["type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": ["query": "rivers"]],
                ["type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []],
            ],
        ]
        #expect(ServerToolHistory.upstreamMessages([["role": "user", "content": "Hi"], hosted]) == nil)
    }
}
