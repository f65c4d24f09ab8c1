import SluiceClient
import SluiceWire

/// What a raw call returned: its messages and final status.
public struct RawCallResult: Sendable {
    public var messages: [[UInt8]]
    public var status: RPCClientStatus

    /// The messages parsed as JSON (a message that is not JSON reads as null).
    public var json: [JSONValue] { messages.map { (try? JSONValue(parsing: $0)) ?? .null } }
}
