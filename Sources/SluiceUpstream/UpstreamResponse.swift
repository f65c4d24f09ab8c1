/// A buffered upstream response (`UpstreamClient.post`): its status, headers and whole body.
public struct UpstreamResponse: Sendable {
    public var status: Int
    /// Lower-case names, in arrival order.
    public var headers: [(String, String)]
    public var body: [UInt8]

    public init(status: Int, headers: [(String, String)], body: [UInt8]) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public func header(_ name: String) -> String? {
        headers.first { $0.0 == name }?.1
    }
}
