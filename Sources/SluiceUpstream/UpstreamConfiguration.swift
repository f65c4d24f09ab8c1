import Glibc

/// Where and how Sluice calls the Anthropic Messages API.
///
/// The API key is a secret: `description`, `debugDescription` and every error this module produces print it
/// as `<redacted>`. Load it with `loadAPIKey(environment:keyFile:)` — never from a command-line flag, which
/// other users of the machine can read in the process list.
public struct UpstreamConfiguration: Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    /// `https://…` (HTTP/2 over TLS, ALPN) or `http://…` (cleartext HTTP/2 with prior knowledge; the simulator).
    public var baseURL: String
    public var apiKey: String?
    /// A PEM CA bundle; nil uses libcurl's built-in default. Peer and host verification are always on.
    public var caBundlePath: String?
    public var connectTimeout: Duration
    /// From submission until the model's first output: the first event other than `message_start` and `ping`
    /// of a 2xx response (or the headers of an error response). The API sends its headers, `message_start` and
    /// pings as soon as it accepts a request, so waiting for the first response byte alone would not catch a
    /// request stuck before its first token. The connect time counts towards it.
    public var firstByteTimeout: Duration
    /// Once output has started, the longest silence tolerated: no bytes, or nothing but `ping` events (enforced
    /// per event, so a stream kept open by pings alone still times out).
    public var idleTimeout: Duration
    /// Decoded events one transfer may hold for a consumer that isn't reading; past this the transfer is
    /// aborted with a retryable "consumer too slow" failure (see `UpstreamStream` on backpressure).
    public var maxBufferedBytes: Int
    /// How much of a non-2xx response body is kept to classify the error.
    public var maxErrorBodyBytes: Int
    /// CURLMOPT_MAX_CONCURRENT_STREAMS: streams multiplexed on one HTTP/2 connection (libcurl's default is 100).
    public var maxConcurrentStreams: Int

    public static let defaultBaseURL = "https://api.anthropic.com"

    public init(
        baseURL: String = UpstreamConfiguration.defaultBaseURL,
        apiKey: String? = nil,
        caBundlePath: String? = nil,
        connectTimeout: Duration = .seconds(10),
        firstByteTimeout: Duration = .seconds(60),
        idleTimeout: Duration = .seconds(30),
        maxBufferedBytes: Int = 8 << 20,
        maxErrorBodyBytes: Int = 64 << 10,
        maxConcurrentStreams: Int = 10
    ) {
        self.baseURL = baseURL
        self.apiKey = apiKey
        self.caBundlePath = caBundlePath
        self.connectTimeout = connectTimeout
        self.firstByteTimeout = firstByteTimeout
        self.idleTimeout = idleTimeout
        self.maxBufferedBytes = maxBufferedBytes
        self.maxErrorBodyBytes = maxErrorBodyBytes
        self.maxConcurrentStreams = maxConcurrentStreams
    }

    public var description: String {
        "UpstreamConfiguration(baseURL: \(baseURL), apiKey: \(apiKey == nil ? "nil" : "<redacted>"), "
            + "caBundlePath: \(caBundlePath ?? "default"), connectTimeout: \(connectTimeout), "
            + "firstByteTimeout: \(firstByteTimeout), idleTimeout: \(idleTimeout), "
            + "maxBufferedBytes: \(maxBufferedBytes), maxConcurrentStreams: \(maxConcurrentStreams))"
    }

    public var debugDescription: String { description }

    /// The key from `keyFile` when one is given (its whole content, whitespace-trimmed), else from the
    /// `ANTHROPIC_API_KEY` environment variable (trimmed). Nil when neither yields a non-empty key.
    /// Throws when `keyFile` can't be read; the error names the file, never its content.
    public static func loadAPIKey(
        environment: [String: String] = UpstreamConfiguration.processEnvironment(),
        keyFile: String? = nil
    ) throws(UpstreamConfigurationError) -> String? {
        if let keyFile {
            let text = try readFile(keyFile)
            let key = trimmed(text)
            guard !key.isEmpty else { throw .invalid("API key file \(keyFile) is empty") }
            return key
        }
        let key = trimmed(environment["ANTHROPIC_API_KEY"] ?? "")
        return key.isEmpty ? nil : key
    }

    /// This process's environment.
    public static func processEnvironment() -> [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }

    private static func trimmed(_ text: String) -> String {
        String(text.trimmingPrefix(while: \.isWhitespace).reversed().trimmingPrefix(while: \.isWhitespace).reversed())
    }

    private static func readFile(_ path: String) throws(UpstreamConfigurationError) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .invalid("cannot open API key file \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .invalid("cannot read API key file \(path): \(String(cString: strerror(errno)))")
            }
            if count == 0 { break }
            bytes += chunk[..<count]
            if bytes.count > 64 << 10 { throw .invalid("API key file \(path) is too large") }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// A configuration or environment problem found before any request is made.
public enum UpstreamConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalid(String)

    public var description: String {
        switch self {
        case .invalid(let message): message
        }
    }
}
