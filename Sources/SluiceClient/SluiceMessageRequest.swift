import SluiceWire

/// A SendMessage request (schema/send_message_request.schema.json). For members this type does not
/// name, send a `JSONValue` with `SluiceClient.sendMessage(json:)`.
public struct SluiceMessageRequest: Sendable, Equatable {
    public struct Message: Sendable, Equatable {
        public var role: String
        /// A string, or an array of content blocks.
        public var content: JSONValue

        public init(role: String, content: JSONValue) {
            self.role = role
            self.content = content
        }

        public static func user(_ text: String) -> Message { Message(role: "user", content: .string(text)) }
        public static func assistant(_ text: String) -> Message { Message(role: "assistant", content: .string(text)) }
    }

    public var model: String
    public var maxTokens: Int
    public var messages: [Message]
    public var system: String?
    /// Names of server tools the model may use.
    public var tools: [String]
    /// API tool definitions (client tools the caller runs, Anthropic-hosted tools), sent in `tools` after the names.
    public var toolDefinitions: [JSONValue] = []
    /// Extended thinking's `budget_tokens` (thinking is enabled when set).
    public var thinkingBudget: Int?
    /// Ask for the final turn's assembled message in `stream_complete`.
    public var includeMessage = false
    public var temperature: Double?
    /// A simulator scenario (schema/simulation.schema.json); refused when the upstream is the real API.
    public var simulation: JSONValue?

    public init(
        model: String, maxTokens: Int, messages: [Message], system: String? = nil, tools: [String] = [],
        temperature: Double? = nil, simulation: JSONValue? = nil
    ) {
        self.model = model
        self.maxTokens = maxTokens
        self.messages = messages
        self.system = system
        self.tools = tools
        self.temperature = temperature
        self.simulation = simulation
    }

    /// One user message.
    public init(model: String, maxTokens: Int, prompt: String) {
        self.init(model: model, maxTokens: maxTokens, messages: [.user(prompt)])
    }

    public var json: JSONValue {
        var fields: [String: JSONValue] = [
            "model": .string(model), "max_tokens": .integer(maxTokens),
            "messages": .array(messages.map { ["role": .string($0.role), "content": $0.content] }),
        ]
        if let system { fields["system"] = .string(system) }
        let allTools = tools.map(JSONValue.string) + toolDefinitions
        if !allTools.isEmpty { fields["tools"] = .array(allTools) }
        if let thinkingBudget { fields["thinking"] = ["type": "enabled", "budget_tokens": .integer(thinkingBudget)] }
        if includeMessage { fields["include_message"] = true }
        if let temperature { fields["temperature"] = .double(temperature) }
        if let simulation { fields["simulation"] = simulation }
        return .object(fields)
    }
}
