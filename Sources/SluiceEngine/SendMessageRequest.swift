import SluiceWire

/// `SendMessage`'s request, validated. Messages keep Anthropic's format and are forwarded as is.
public struct SendMessageRequest: Sendable {
    public var model: String
    public var maxTokens: Int
    public var system: JSONValue?
    public var messages: [JSONValue]
    public var tools: [String]
    /// Kept as sent, so the upstream request carries exactly the client's number.
    public var temperature: JSONNumber?
    public var metadata: JSONValue?
    /// The simulator scenario, forwarded as the `sluice-simulation` header.
    public var simulation: JSONValue?
    /// The request as the client sent it (the store keeps it beside the stream).
    public private(set) var json: [UInt8] = []

    public static let maxMaxTokens = 128_000

    /// Parses and validates; errors are INVALID_ARGUMENT and name the offending field.
    public init(json bytes: [UInt8]) throws(RPCError) {
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
        let known: Set = ["model", "max_tokens", "system", "messages", "tools", "temperature", "metadata", "simulation"]
        if let unknown = fields.keys.sorted().first(where: { !known.contains($0) }) {
            throw RPCError(.invalidArgument, "unknown request field '\(unknown)'; known fields: \(known.sorted().joined(separator: ", "))")
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
            guard let role = message["role"]?.stringValue, role == "user" || role == "assistant" else {
                throw RPCError(.invalidArgument, "messages[\(index)].role must be \"user\" or \"assistant\"")
            }
            switch message["content"] {
            case .string?, .array?: break
            default: throw RPCError(.invalidArgument, "messages[\(index)].content must be a string or an array of content blocks")
            }
        }
        if let system = fields["system"], !system.isNull {
            switch system {
            case .string, .array: break
            default: throw RPCError(.invalidArgument, "'system' must be a string or an array of text blocks")
            }
        }
        var tools: [String] = []
        if let value = fields["tools"], !value.isNull {
            guard let names = value.arrayValue?.compactMap(\.stringValue), names.count == value.arrayValue?.count else {
                throw RPCError(.invalidArgument, "'tools' must be an array of server tool names")
            }
            tools = names
        }
        var temperature: JSONNumber?
        if let value = fields["temperature"], !value.isNull {
            guard let number = value.numberValue, (0...1).contains(number.doubleValue) else {
                throw RPCError(.invalidArgument, "'temperature' must be a number from 0 to 1")
            }
            temperature = number
        }
        if let metadata = fields["metadata"], !metadata.isNull, metadata.objectValue == nil {
            throw RPCError(.invalidArgument, "'metadata' must be an object")
        }
        if let simulation = fields["simulation"], !simulation.isNull, simulation.objectValue == nil {
            throw RPCError(.invalidArgument, "'simulation' must be an object (the simulator scenario)")
        }
        self.model = model
        self.maxTokens = maxTokens
        self.system = fields["system"].flatMap { $0.isNull ? nil : $0 }
        self.messages = messages
        self.tools = tools
        self.temperature = temperature
        self.metadata = fields["metadata"].flatMap { $0.isNull ? nil : $0 }
        self.simulation = fields["simulation"].flatMap { $0.isNull ? nil : $0 }
    }

    /// The Messages API body, streaming, for `conversation` (the request's messages plus earlier
    /// tool turns), with `prefill` as a trailing assistant message.
    func upstreamBody(conversation: [JSONValue], prefill: String?, tools: [JSONValue]) -> [UInt8] {
        var body: [String: JSONValue] = [
            "model": .string(model),
            "max_tokens": .integer(maxTokens),
            "stream": .bool(true),
        ]
        if !tools.isEmpty { body["tools"] = .array(tools) }
        var conversation = conversation
        if let prefill, !prefill.isEmpty {
            conversation.append(["role": "assistant", "content": .string(prefill)])
        }
        body["messages"] = .array(conversation)
        if let system { body["system"] = system }
        if let temperature { body["temperature"] = .number(temperature) }
        // The API accepts only `user_id` in metadata; anything else stays in Sluice.
        if let userID = metadata?["user_id"] { body["metadata"] = ["user_id": userID] }
        return JSONValue.object(body).serialized()
    }
}
