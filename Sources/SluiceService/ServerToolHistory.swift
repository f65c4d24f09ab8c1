import SluiceEngine
import SluiceWire

/// A conversation sent back to `POST /v1/messages` after Sluice's server tools ran holds their blocks as the
/// answer gave them (`MessagesAPITranslator`): `server_tool_use` and `<name>_tool_result` inside the assistant
/// message. To the upstream, Sluice's tools are ordinary tools, so that message is split as it was sent: the
/// assistant's `tool_use` blocks, a user message of their `tool_result`s, and the assistant's text after them.
enum ServerToolHistory {
    /// `messages` in the upstream's form, or nil when they hold no Sluice server tool block.
    static func upstreamMessages(_ messages: [JSONValue]) -> [JSONValue]? {
        guard messages.contains(where: holdsServerToolBlocks) else { return nil }
        return messages.flatMap { message in
            guard holdsServerToolBlocks(message), let blocks = message["content"]?.arrayValue else { return [message] }
            return split(blocks)
        }
    }

    private static func holdsServerToolBlocks(_ message: JSONValue) -> Bool {
        guard message["role"]?.stringValue == "assistant", let blocks = message["content"]?.arrayValue else { return false }
        return blocks.contains { toolUse($0) != nil || toolResult($0) != nil }
    }

    /// One assistant message's blocks as alternating assistant and user messages.
    private static func split(_ blocks: [JSONValue]) -> [JSONValue] {
        var messages: [JSONValue] = []
        var assistant: [JSONValue] = []
        var results: [JSONValue] = []
        func flush() {
            if !assistant.isEmpty { messages.append(["role": "assistant", "content": .array(assistant)]) }
            if !results.isEmpty { messages.append(["role": "user", "content": .array(results)]) }
            assistant = []
            results = []
        }
        for block in blocks {
            if let result = toolResult(block) {
                results.append(result)
            } else if let use = toolUse(block) {
                // Calls of one turn run in parallel, so their blocks interleave with the results: the turn asked for all.
                assistant.append(use)
            } else {
                // The model's next words come after the results it was given.
                if !results.isEmpty { flush() }
                assistant.append(block)
            }
        }
        flush()
        return messages
    }

    /// A `server_tool_use` of a Sluice tool as the `tool_use` the model made.
    private static func toolUse(_ block: JSONValue) -> JSONValue? {
        guard block["type"]?.stringValue == "server_tool_use", let name = block["name"]?.stringValue,
            ServerToolNames.all.contains(name)
        else { return nil }
        return ["type": "tool_use", "id": block["id"] ?? "", "name": .string(name), "input": block["input"] ?? [:]]
    }

    /// A `<name>_tool_result` of a Sluice tool as the `tool_result` the model was given: the output's JSON, or the
    /// error's message.
    private static func toolResult(_ block: JSONValue) -> JSONValue? {
        guard let type = block["type"]?.stringValue, type.hasSuffix("_tool_result"),
            ServerToolNames.all.contains(String(type.dropLast("_tool_result".count)))
        else { return nil }
        let toolUseID = block["tool_use_id"] ?? ""
        guard case .object(var content)? = block["content"] else {
            return ["type": "tool_result", "tool_use_id": toolUseID, "content": .string(block["content"]?.serializedString ?? "")]
        }
        if content["type"]?.stringValue?.hasSuffix("_tool_result_error") == true {
            return ["type": "tool_result", "tool_use_id": toolUseID, "content": content["error_message"] ?? "", "is_error": true]
        }
        content["type"] = nil
        return ["type": "tool_result", "tool_use_id": toolUseID, "content": .string(JSONValue.object(content).serializedString)]
    }
}
