import SluiceIO
import Glibc
import Logging
import SluiceWire
import Synchronization

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

/// Streams Messages API responses over libcurl's multi interface.
///
/// One multi handle per event loop, driven by that loop; every transfer is multiplexed over shared HTTP/2
/// connections. Given a server's loops, a call made on one of them (a stream's job, running on its client's
/// loop) uses that loop's handle, so its events never leave the thread; otherwise the client runs a loop of its own.
public final class UpstreamClient: Sendable {
    public let configuration: UpstreamConfiguration
    private let multis: [CurlMulti]
    /// The loop this client started for itself, if it was given none.
    private let ownLoop: EventLoop?
    private let nextMulti = Atomic<Int>(0)

    /// - Parameter loops: event loops to run transfers on (not necessarily started yet; whoever owns them starts
    ///   and stops them). Without them the client starts and owns one loop.
    public init(configuration: UpstreamConfiguration, logger: Logger = Logger(label: "sluice.upstream"), loops: [EventLoop] = []) throws {
        self.configuration = configuration
        let ownLoop = loops.isEmpty ? try EventLoop(index: 0) : nil
        multis = try (ownLoop.map { [$0] } ?? loops).map { try CurlMulti(configuration: configuration, logger: logger, loop: $0) }
        ownLoop?.start()
        self.ownLoop = ownLoop
    }

    /// Without `shutdown` first: the multi handles close on their loops without anyone waiting for them (then this
    /// client's own loop, if any, exits).
    deinit {
        for multi in multis { multi.startShutdown() }
        ownLoop?.stop()
    }

    /// Starts `POST {baseURL}/v1/messages` with `body` (JSON bytes; must contain `"stream": true`).
    ///
    /// Events arrive in order. The stream finishes normally after `message_stop` (which it yields), or throws an
    /// `UpstreamFailure`. A mid-stream `error` event is not yielded: it ends the stream with
    /// `UpstreamFailure.errorEvent`. Dropping the stream or its iterator, or cancelling the consuming task,
    /// aborts the transfer promptly (RST_STREAM) and frees it.
    ///
    /// `headers` are sent after Sluice's own; names Sluice manages (`x-api-key`, `authorization`,
    /// `anthropic-version`, `content-type`, `accept`, `content-length`, `host`) are ignored.
    public func streamMessage(body: [UInt8], headers: [(String, String)] = []) -> UpstreamStream {
        let channel = UpstreamEventChannel(maxBufferedBytes: configuration.maxBufferedBytes)
        let transfer = CurlTransfer(channel: channel, body: body, extraHeaders: headers)
        let multi =
            multis.first { $0.loop.inEventLoop }
            ?? multis[nextMulti.wrappingAdd(1, ordering: .relaxed).oldValue % multis.count]
        let handle = UpstreamTransferHandle(multi: multi, transfer: transfer, channel: channel)
        multi.submit(transfer)
        return UpstreamStream(handle: handle)
    }

    /// Easy handles currently in the multi handles (for leak checks).
    public var openTransfers: Int { multis.reduce(0) { $0 + $1.openTransfers.load(ordering: .acquiring) } }

    /// Transfers aborted because their consumer fell `maxBufferedBytes` behind.
    public var slowConsumerAborts: Int { multis.reduce(0) { $0 + $1.slowConsumerAborts.load(ordering: .relaxed) } }

    /// Aborts every transfer (their streams throw `.cancelled`) and closes the connections; returns once that is
    /// done. Idempotent; later `streamMessage` calls fail immediately with `.cancelled`.
    public func shutdown() async {
        for multi in multis { await multi.shutdown() }
        ownLoop?.stop()
    }
}

/// The response of one `streamMessage` call, as an `AsyncSequence` of events. Iterate it once.
///
/// Backpressure: libcurl is never paused (`CURL_WRITEFUNC_PAUSE` is avoided on purpose: libcurl 7.88's HTTP/2
/// pause/unpause has known bugs — curl issues 10971, 10988, 11982). Instead the event loop parses and decodes
/// each chunk as it arrives and appends the events to this stream's buffer, which is bounded by
/// `UpstreamConfiguration.maxBufferedBytes` (8 MiB by default, counted as SSE payload bytes). Claude produces
/// tokens far slower than any live consumer reads them, so the buffer normally holds an event or two; if a
/// consumer nevertheless falls that far behind, the transfer is aborted, counted in
/// `UpstreamClient.slowConsumerAborts`, and the stream throws a retryable `.streamEndedEarly` failure saying
/// "consumer too slow" after the consumer has drained the events buffered before it.
/// Flow control towards Anthropic is therefore libcurl's and nghttp2's default window handling, never stalled by
/// a slow consumer, so one slow consumer can't hold up other streams on the same connection.
public struct UpstreamStream: AsyncSequence, Sendable {
    public typealias Element = AnthropicEvent
    public typealias Failure = UpstreamFailure

    let handle: UpstreamTransferHandle

    public func makeAsyncIterator() -> Iterator {
        Iterator(handle: handle)
    }

    /// The response's headers (lower-case names), once they have arrived: always by the time the first
    /// event is delivered or a failure other than a connection failure is thrown.
    public var responseHeaders: [(String, String)]? {
        handle.channel.responseHead?.headers
    }

    /// The response's HTTP status, once the headers have arrived.
    public var responseStatus: Int? {
        handle.channel.responseHead?.status
    }

    /// The response's `request-id` header, once the headers have arrived.
    public var requestID: String? {
        handle.channel.responseHead?.requestID
    }

    /// Aborts the transfer; the stream then throws `.cancelled` (after no further events).
    public func cancel() {
        handle.cancel()
    }

    public struct Iterator: AsyncIteratorProtocol {
        let handle: UpstreamTransferHandle

        public mutating func next() async throws(UpstreamFailure) -> AnthropicEvent? {
            try await handle.next()
        }

        public mutating func next(isolation actor: isolated (any Actor)?) async throws(UpstreamFailure)
            -> AnthropicEvent?
        {
            try await handle.next()
        }
    }
}

/// The consumer's side of one transfer. When the last stream copy and iterator are gone, the transfer is
/// cancelled: a consumer that stops iterating never leaves a transfer running.
final class UpstreamTransferHandle: Sendable {
    let multi: CurlMulti
    /// Only its identity is used here; its multi handle's event loop owns its state.
    let transfer: CurlTransfer
    let channel: UpstreamEventChannel

    init(multi: CurlMulti, transfer: CurlTransfer, channel: UpstreamEventChannel) {
        self.multi = multi
        self.transfer = transfer
        self.channel = channel
    }

    deinit {
        cancel()
    }

    func cancel() {
        if channel.cancelByConsumer() {
            multi.cancel(transfer)
        }
    }

    func next() async throws(UpstreamFailure) -> AnthropicEvent? {
        while true {
            switch channel.poll() {
            case .event(let event): return event
            case .finished: return nil
            case .failed(let failure): throw failure
            case .empty: break
            }
            if Task.isCancelled {
                cancel()
                continue // the channel now reports `.failed(.cancelled)`
            }
            await withTaskCancellationHandler {
                await channel.waitForActivity()
            } onCancel: {
                self.cancel()
            }
        }
    }
}
