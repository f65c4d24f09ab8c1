import SluiceWire

/// `SendMessage`'s request, validated. Messages keep Anthropic's format and are forwarded as is; every
/// Messages API parameter Sluice does not read passes through unchanged (the API keeps adding them).
public struct SendMessageRequest: Sendable {
    public var model: String
    public var maxTokens: Int
    public var system: JSONValue?
    public var messages: [JSONValue]
    /// Sluice's server tools the request names (strings in `tools`); Sluice runs them.
    public var tools: [String]
    /// API tool definitions (objects in `tools`): the caller's own tools and Anthropic-hosted tools, forwarded
    /// unchanged. Sluice never runs them.
    public var toolDefinitions: [JSONValue]
    /// The names of `toolDefinitions`: a `tool_use` naming one is the caller's to run.
    public var clientToolNames: Set<String>
    public var metadata: JSONValue?
    /// `thinking.type == "enabled"`: the API then refuses an assistant prefill, so retries restart.
    public var thinkingEnabled: Bool
    /// `stream_complete` carries the final turn's assembled `message`.
    public var includeMessage: Bool
    /// The simulator scenario, forwarded as the `sluice-simulation` header.
    public var simulation: JSONValue?
    /// Every other Messages API parameter (`temperature`, `tool_choice`, `thinking`, `stop_sequences`,
    /// `top_p`, `top_k`, `service_tier`, ones added later…), forwarded as sent, numbers in their exact text.
    public var passthrough: [String: JSONValue]
    /// The request as the client sent it (the store keeps it beside the stream).
    public private(set) var json: [UInt8] = []
    /// Request headers for the upstream (`anthropic-version`, `anthropic-beta` from `POST /v1/messages`); never a key.
    public var upstreamHeaders: [(String, String)] = []

    public static let maxMaxTokens = 128_000

    /// Forgets the request's bytes once the store (if any) has taken them, so a large request (images, documents) is
    /// not held twice for the stream's life.
    mutating func dropJSON() {
        json = []
    }

    /// Fields Sluice owns or builds itself; everything else is passthrough.
    static let sluiceFields: Set = [
        "model", "max_tokens", "system", "messages", "tools", "metadata", "simulation", "include_message", "stream",
    ]

    /// Parses and validates; errors are INVALID_ARGUMENT and name the offending field.
    /// `serverToolNames` are the names Sluice's server tools use whether or not this server offers them: a
    /// client tool may not take one.
    public init(json bytes: [UInt8], serverToolNames: Set<String> = ServerToolNames.all) throws(RPCError) {
        json = bytes
        let root: JSONValue
        do {
            root = try JSONValue(parsing: bytes)
        } catch {
            throw RPCError(.invalidArgument, "the request is not valid JSON: \(error)")
        }
        guard case .object(let fields) = root else {
            throw RPCError(.invalidArgument, "the request must be a JSON object")
        }
        guard let model = fields["model"]?.stringValue, !model.isEmpty else {
            throw RPCError(.invalidArgument, "'model' is required and must be a non-empty string")
        }
        guard let maxTokens = fields["max_tokens"]?.intValue, (1...Self.maxMaxTokens).contains(maxTokens) else {
            throw RPCError(.invalidArgument, "'max_tokens' is required and must be an integer from 1 to \(Self.maxMaxTokens)")
        }
        guard let messages = fields["messages"]?.arrayValue, !messages.isEmpty else {
            throw RPCError(.invalidArgument, "'messages' is required and must be a non-empty array")
        }
        for (index, message) in messages.enumerated() {
            guard message.objectValue != nil else {
                throw RPCError(.invalidArgument, "messages[\(index)] must be an object with 'role' and 'content'")
            }
            guard let role = message["role"]?.stringValue, role == "user" || role == "assistant" else {
                throw RPCError(.invalidArgument, "messages[\(index)].role must be \"user\" or \"assistant\"")
            }
            switch message["content"] {
            case .string?: break
            case .array(let blocks)?: try Self.validateBlocks(blocks, path: "messages[\(index)].content")
            default: throw RPCError(.invalidArgument, "messages[\(index)].content must be a string or an array of content blocks")
            }
        }
        if let system = fields["system"], !system.isNull {
            switch system {
            case .string: break
            case .array(let blocks): try Self.validateBlocks(blocks, path: "system")
            default: throw RPCError(.invalidArgument, "'system' must be a string or an array of text blocks")
            }
        }
        var tools: [String] = []
        var definitions: [JSONValue] = []
        if let value = fields["tools"], !value.isNull {
            guard let entries = value.arrayValue else {
                throw RPCError(
                    .invalidArgument, "'tools' must be an array of server tool names (strings) and API tool definitions (objects)")
            }
            for (index, entry) in entries.enumerated() {
                switch entry {
                case .string(let name):
                    tools.append(name)
                case .object(let definition):
                    guard let name = definition["name"]?.stringValue, !name.isEmpty else {
                        throw RPCError(.invalidArgument, "tools[\(index)].name is required and must be a non-empty string")
                    }
                    // Anthropic-hosted tools (with a `type` other than "custom") keep their API names.
                    let isClientTool = definition["type"].map { $0.stringValue == "custom" } ?? true
                    if isClientTool && serverToolNames.contains(name) {
                        throw RPCError(
                            .invalidArgument,
                            "tools[\(index)]: the client tool '\(name)' has the name of a Sluice server tool; rename it, or name the server tool as the string \"\(name)\""
                        )
                    }
                    definitions.append(entry)
                default:
                    throw RPCError(
                        .invalidArgument, "tools[\(index)] must be a server tool name (a string) or an API tool definition (an object)")
                }
            }
            let names = tools + definitions.compactMap { $0["name"]?.stringValue }
            if let duplicate = Self.firstDuplicate(names) {
                throw RPCError(.invalidArgument, "'tools' names '\(duplicate)' twice; tool names must be unique")
            }
        }
        if let value = fields["temperature"], !value.isNull {
            guard let number = value.numberValue, (0...1).contains(number.doubleValue) else {
                throw RPCError(.invalidArgument, "'temperature' must be a number from 0 to 1")
            }
        }
        if let metadata = fields["metadata"], !metadata.isNull, metadata.objectValue == nil {
            throw RPCError(.invalidArgument, "'metadata' must be an object")
        }
        var thinkingEnabled = false
        if let thinking = fields["thinking"], !thinking.isNull {
            guard let type = thinking["type"]?.stringValue else {
                throw RPCError(
                    .invalidArgument,
                    "'thinking' must be an object with a string 'type' (e.g. {\"type\":\"enabled\",\"budget_tokens\":2048})")
            }
            thinkingEnabled = type == "enabled"
        }
        var includeMessage = false
        if let value = fields["include_message"], !value.isNull {
            guard let flag = value.boolValue else { throw RPCError(.invalidArgument, "'include_message' must be true or false") }
            includeMessage = flag
        }
        if let simulation = fields["simulation"], !simulation.isNull, simulation.objectValue == nil {
            throw RPCError(.invalidArgument, "'simulation' must be an object (the simulator scenario)")
        }
        self.model = model
        self.maxTokens = maxTokens
        self.system = fields["system"].flatMap { $0.isNull ? nil : $0 }
        self.messages = messages
        self.tools = tools
        self.toolDefinitions = definitions
        self.clientToolNames = Set(definitions.compactMap { $0["name"]?.stringValue })
        self.metadata = fields["metadata"].flatMap { $0.isNull ? nil : $0 }
        self.thinkingEnabled = thinkingEnabled
        self.includeMessage = includeMessage
        self.simulation = fields["simulation"].flatMap { $0.isNull ? nil : $0 }
        self.passthrough = fields.filter { !Self.sluiceFields.contains($0.key) }
    }

    /// Checks what Sluice itself reads of content blocks: each is an object with a string `type`. The rest of
    /// a block's shape is the upstream's to judge.
    private static func validateBlocks(_ blocks: [JSONValue], path: String) throws(RPCError) {
        for (index, block) in blocks.enumerated() {
            guard block.objectValue != nil, block["type"]?.stringValue != nil else {
                throw RPCError(.invalidArgument, "\(path)[\(index)] must be a content block: an object with a string 'type'")
            }
        }
    }

    private static func firstDuplicate(_ names: [String]) -> String? {
        var seen: Set<String> = []
        return names.first { !seen.insert($0).inserted }
    }

    /// The Messages API body, streaming, for `conversation` (the request's messages plus earlier
    /// tool turns), with `prefill` as a trailing assistant message.
    func upstreamBody(conversation: [JSONValue], prefill: String?, serverTools: [JSONValue]) -> [UInt8] {
        var body = passthrough
        body["model"] = .string(model)
        body["max_tokens"] = .integer(maxTokens)
        body["stream"] = .bool(true)
        let tools = serverTools + toolDefinitions
        if !tools.isEmpty { body["tools"] = .array(tools) }
        var conversation = conversation
        if let prefill, !prefill.isEmpty {
            conversation.append(["role": "assistant", "content": .string(prefill)])
        }
        body["messages"] = .array(conversation)
        if let system { body["system"] = system }
        // The API accepts only `user_id` in metadata; anything else stays in Sluice.
        if let userID = metadata?["user_id"] { body["metadata"] = ["user_id": userID] }
        return JSONValue.object(body).serialized()
    }
}

/// The names of Sluice's server tools (`Tools/FileTools.swift`), reserved whether or not a server offers them.
public enum ServerToolNames {
    public static let readFile = "read_file"
    public static let listDirectory = "list_directory"
    public static let searchFiles = "search_files"
    public static let all: Set = [readFile, listDirectory, searchFiles]
}
