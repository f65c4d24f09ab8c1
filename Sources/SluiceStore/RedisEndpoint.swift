/// Where the Redis store is: `redis://[user:password@]host:port[/db]`. The password may also come from a file or
/// the environment (`--store-password-file`, `SLUICE_STORE_PASSWORD`); it is never logged (`description` omits it).
public struct RedisEndpoint: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var user: String?
    public var password: String?
    public var database: Int

    public init(host: String, port: Int = 6379, user: String? = nil, password: String? = nil, database: Int = 0) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
    }

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case invalid(String)

        public var description: String {
            switch self {
            case .invalid(let why): "invalid Redis store URL: \(why); expected redis://[user:password@]host:port[/db]"
            }
        }
    }

    public init(url: String) throws(ParseError) {
        guard url.hasPrefix("redis://") else { throw .invalid("it must start with redis://") }
        var rest = Substring(url.dropFirst("redis://".count))
        var user: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                user = credentials[..<colon].isEmpty ? nil : String(credentials[..<colon])
                password = String(credentials[credentials.index(after: colon)...])
            } else {
                password = String(credentials)
            }
        }
        var database = 0
        if let slash = rest.firstIndex(of: "/") {
            let path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
            if !path.isEmpty {
                guard let number = Int(path), number >= 0 else { throw .invalid("the database '\(path)' is not a number") }
                database = number
            }
        }
        var port = 6379
        if let colon = rest.lastIndex(of: ":") {
            guard let number = Int(rest[rest.index(after: colon)...]), (1...65535).contains(number) else {
                throw .invalid("the port is not a number from 1 to 65535")
            }
            port = number
            rest = rest[..<colon]
        }
        guard !rest.isEmpty else { throw .invalid("the host is missing") }
        self.init(host: String(rest), port: port, user: user, password: password, database: database)
    }

    /// The endpoint without its password, for logs and errors.
    public var description: String {
        let credentials = user.map { "\($0)@" } ?? (password != nil ? "***@" : "")
        return "redis://\(credentials)\(host):\(port)/\(database)"
    }
}
