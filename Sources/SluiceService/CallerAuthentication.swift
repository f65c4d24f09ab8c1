import SluiceTransport
import SluiceWire

/// Bearer-token authentication. Callers are identified by the position of their token in the
/// configured list (`key-1`, `key-2`, …), so logs and metrics never carry a token.
public struct CallerAuthentication: Sendable {
    private let tokens: [[UInt8]]

    /// No tokens: every caller is accepted as `anonymous`.
    public init(tokens: [String]) {
        self.tokens = tokens.map { Array($0.utf8) }
    }

    public var isEnabled: Bool { !tokens.isEmpty }

    /// Tokens from a keys file: one per line, `#` starts a comment, blank lines ignored.
    public static func parseKeysFile(_ text: String) -> [String] {
        text.split(whereSeparator: \.isNewline).compactMap { line in
            let content = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let token = String(content.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
            return token.isEmpty ? nil : token
        }
    }

    /// The caller's identity, or UNAUTHENTICATED.
    public func caller(authorization: String?) throws(RPCError) -> String {
        guard isEnabled else { return "anonymous" }
        guard let authorization, authorization.count > 7, authorization.prefix(7).lowercased() == "bearer " else {
            throw RPCError(
                .unauthenticated,
                "missing credentials: send 'authorization: Bearer <token>' with a caller token this server accepts (its operator issues them)"
            )
        }
        let presented = Array(authorization.dropFirst(7).utf8)
        var match: Int?
        // Compare against every token without stopping early, so timing does not reveal which prefix matched.
        for (index, token) in tokens.enumerated() where Self.constantTimeEqual(presented, token) {
            match = index
        }
        guard let match else {
            throw RPCError(.unauthenticated, "the bearer token is not valid for this server")
        }
        return "key-\(match + 1)"
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: a.count ^ b.count)
        for index in 0..<max(a.count, b.count) {
            difference |= (index < a.count ? a[index] : 0) ^ (index < b.count ? b[index] : 0)
        }
        return difference == 0
    }
}
