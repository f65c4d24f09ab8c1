/// The JSON body of Connect's end-stream message (the envelope flagged 0x02 that ends a
/// streaming response), per connectrpc.com/docs/protocol.
public enum ConnectEndStream {
    /// `{}` on success, else `{"error":{"code":"…","message":"…"}}` (message omitted when empty);
    /// metadata, when given, is added as `"metadata":{"key":["value",…]}`, repeated keys grouped.
    public static func body(status: StatusCode, message: String, metadata: [(String, String)] = []) -> [UInt8] {
        var body: [String: JSONValue] = [:]
        if status != .ok {
            var error: [String: JSONValue] = ["code": .string(status.connectCode)]
            if !message.isEmpty { error["message"] = .string(message) }
            body["error"] = .object(error)
        }
        if !metadata.isEmpty {
            var grouped: [String: [JSONValue]] = [:]
            for (key, value) in metadata { grouped[key, default: []].append(.string(value)) }
            body["metadata"] = .object(grouped.mapValues(JSONValue.array))
        }
        return JSONValue.object(body).serialized()
    }

    /// Reads an end-stream body: `(.ok, "")` when it has no error. An error code this side doesn't
    /// know (or "ok", which Connect forbids in errors) reads as `.unknown`, as the protocol asks.
    public static func parse(_ body: some Collection<UInt8>) throws(RPCError) -> (code: StatusCode, message: String) {
        let root: JSONValue
        do {
            root = try JSONValue(parsing: body)
        } catch {
            throw RPCError(.internal, "malformed Connect end-stream message: \(error)")
        }
        guard root.objectValue != nil else {
            throw RPCError(.internal, "malformed Connect end-stream message: not a JSON object")
        }
        guard let error = root["error"], !error.isNull else { return (.ok, "") }
        guard let codeName = error["code"]?.stringValue else {
            throw RPCError(.internal, "malformed Connect end-stream message: 'error' has no string 'code'")
        }
        let message: String
        switch error["message"] {
        case nil, .null?: message = ""
        case .string(let text)?: message = text
        default: throw RPCError(.internal, "malformed Connect end-stream message: 'error.message' is not a string")
        }
        let code = StatusCode(connectCode: codeName).flatMap { $0 == .ok ? nil : $0 } ?? .unknown
        return (code, message)
    }
}
