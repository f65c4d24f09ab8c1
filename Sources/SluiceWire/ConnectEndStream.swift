#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The JSON body of Connect's end-stream message (the envelope flagged 0x02 that ends a
/// streaming response), per connectrpc.com/docs/protocol.
public enum ConnectEndStream {
    private struct Body: Codable {
        var error: ErrorBody?
        var metadata: [String: [String]]?
    }

    private struct ErrorBody: Codable {
        var code: String
        var message: String?
    }

    /// `{}` on success, else `{"error":{"code":"…","message":"…"}}` (message omitted when empty);
    /// metadata, when given, is added as `"metadata":{"key":["value",…]}`, repeated keys grouped.
    public static func body(status: StatusCode, message: String, metadata: [(String, String)] = []) -> [UInt8] {
        var body = Body()
        if status != .ok {
            body.error = ErrorBody(code: status.connectCode, message: message.isEmpty ? nil : message)
        }
        if !metadata.isEmpty {
            body.metadata = Dictionary(metadata.map { ($0.0, [$0.1]) }, uniquingKeysWith: +)
        }
        let encoder = JSONEncoder()
        // Sorted keys make the bytes deterministic; "/" needs no escaping in JSON.
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding only strings, arrays and dictionaries of strings cannot fail.
        return Array(try! encoder.encode(body))
    }

    /// Reads an end-stream body: `(.ok, "")` when it has no error. An error code this side doesn't
    /// know (or "ok", which Connect forbids in errors) reads as `.unknown`, as the protocol asks.
    public static func parse(_ body: some Collection<UInt8>) throws(RPCError) -> (code: StatusCode, message: String) {
        let decoded: Body
        do {
            decoded = try JSONDecoder().decode(Body.self, from: Data(body))
        } catch {
            throw RPCError(.internal, "malformed Connect end-stream message: \(error)")
        }
        guard let error = decoded.error else { return (.ok, "") }
        let code = StatusCode(connectCode: error.code).flatMap { $0 == .ok ? nil : $0 } ?? .unknown
        return (code, error.message ?? "")
    }
}
