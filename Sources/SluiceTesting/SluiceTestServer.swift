import Logging
import Prometheus
import SluiceClient
import SluiceEngine
import SluiceIO
import SluiceService
import SluiceSimulator
import SluiceTransport
import SluiceUpstream
import SluiceWire

/// A whole Sluice server in the test process, wired as `sluice serve` wires it: the real transport on a free
/// loopback port, `ServiceRouter` with every route, a `StreamEngine`, and the built-in simulator as its
/// upstream. Tests reach it with a `SluiceClient` or the raw helpers (gRPC, Connect, HTTP/1.1), so a
/// protocol bug is caught without a Python client.
///
/// ```swift
/// try await SluiceTestServer.run { server in
///     let client = try server.client()
///     for try await event in client.sendMessage(request) { … }
/// }
/// ```
public final class SluiceTestServer: Sendable {
    public struct Options: Sendable {
        public var engine = EngineConfiguration()
        /// The Sluice server's transport (host and port are the harness's: loopback, a free port).
        public var server = HTTP2ServerConfiguration()
        /// Caller bearer tokens; none means unauthenticated.
        public var callerTokens: [String] = []
        public var sseHeartbeat: Duration = .seconds(15)

        public init() {
            server.eventLoops = 1
        }
    }

    public let port: Int
    public let engine: StreamEngine
    private let server: HTTP2Server
    private let simulatorServer: HTTP2Server
    private let upstream: UpstreamClient
    /// For raw gRPC and Connect calls.
    private let rawClient: HTTP2Client
    private let rawConnectClient: HTTP2Client
    private let shutDown = LockedValue(false)

    public var url: String { "http://127.0.0.1:\(port)" }
    public var isDraining: Bool { server.isDraining }

    public init(options: Options = Options()) throws {
        var logger = Logger(label: "sluice.test")
        logger.logLevel = .critical

        var simulatorConfiguration = HTTP2ServerConfiguration()
        simulatorConfiguration.port = 0
        simulatorConfiguration.eventLoops = 1
        var simulatorRouter = RPCRouter()
        AnthropicSimulator().register(in: &simulatorRouter)
        simulatorServer = try HTTP2Server(configuration: simulatorConfiguration, router: simulatorRouter, logger: logger)
        try simulatorServer.start()

        // As in `sluice serve`, the server's loops also drive the upstream transfers.
        var configuration = options.server
        configuration.host = "127.0.0.1"
        configuration.port = 0
        let loops = try (0..<configuration.eventLoops).map { try EventLoop(index: $0) }
        upstream = try UpstreamClient(
            configuration: UpstreamConfiguration(baseURL: "http://127.0.0.1:\(simulatorServer.port)"), logger: logger, loops: loops
        )
        var engineConfiguration = options.engine
        engineConfiguration.upstreamIsSimulator = true
        engine = StreamEngine(configuration: engineConfiguration, upstream: upstream, logger: logger)

        let drainState = DrainState()
        let router = ServiceRouter.make(
            engine: engine, authentication: CallerAuthentication(tokens: options.callerTokens), registry: PrometheusCollectorRegistry(),
            sseHeartbeat: options.sseHeartbeat, isDraining: { drainState.isDraining }
        )
        let server = try HTTP2Server(configuration: configuration, router: router, logger: logger, loops: loops)
        drainState.server.withLock { $0 = server }
        try server.start()
        self.server = server
        port = server.port
        rawClient = try HTTP2Client()
        var connectConfiguration = HTTP2ClientConfiguration()
        connectConfiguration.contentType = "application/connect+json"
        rawConnectClient = try HTTP2Client(configuration: connectConfiguration)
    }

    /// Starts a server, runs `body` with it, and shuts everything down, also when `body` throws.
    public static func run<T>(
        _ configure: (inout Options) -> Void = { _ in }, _ body: (SluiceTestServer) async throws -> T
    ) async throws -> T {
        var options = Options()
        configure(&options)
        let server = try SluiceTestServer(options: options)
        do {
            let result = try await body(server)
            await server.shutdown()
            return result
        } catch {
            await server.shutdown()
            throw error
        }
    }

    /// A client of this server; the caller shuts it down.
    public func client(_ configure: (inout SluiceClientConfiguration) -> Void = { _ in }) throws -> SluiceClient {
        var configuration = SluiceClientConfiguration()
        configure(&configuration)
        return try SluiceClient(target: url, configuration: configuration)
    }

    /// Drains the Sluice server as SIGTERM does: calls still running after `timeout` end with UNAVAILABLE.
    /// Returns once it has stopped.
    public func drain(timeout: Duration) async {
        await server.shutdown(drainTimeout: timeout)
    }

    /// Stops the server (at once), its upstream and the simulator. Later calls return at once.
    public func shutdown() async {
        let first = shutDown.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        await rawClient.shutdown()
        await rawConnectClient.shutdown()
        await server.shutdown(drainTimeout: .zero)
        await upstream.shutdown()
        await simulatorServer.shutdown(drainTimeout: .zero)
    }

    // MARK: Raw requests

    /// A gRPC call (`application/grpc+json`) with one request message, to its end.
    public func grpc(
        _ path: String, message: some Collection<UInt8>, headers: [(String, String)] = [], timeout: Duration? = nil
    ) async -> RawCallResult {
        await collect(rawClient, path, message: Array(message), headers: headers, timeout: timeout)
    }

    public func grpc(_ path: String, json: JSONValue, headers: [(String, String)] = [], timeout: Duration? = nil) async -> RawCallResult {
        await grpc(path, message: json.serialized(), headers: headers, timeout: timeout)
    }

    /// One HTTP/1.1 request on a new connection to the same port (`connection: close`), read to its end.
    public func http1(
        _ method: String, _ path: String, headers: [(String, String)] = [], body: [UInt8] = []
    ) async throws -> HTTP1TestResponse {
        try await HTTP1TestResponse.fetch(port: port, method: method, path: path, headers: headers, body: body)
    }

    /// A Connect streaming call (`application/connect+json`) with one request message, to its end.
    public func connect(
        _ path: String, json: JSONValue, headers: [(String, String)] = [], timeout: Duration? = nil
    ) async -> RawCallResult {
        await collect(rawConnectClient, path, message: json.serialized(), headers: headers, timeout: timeout)
    }

    private func collect(
        _ client: HTTP2Client, _ path: String, message: [UInt8], headers: [(String, String)], timeout: Duration?
    ) async -> RawCallResult {
        let call: RPCClientCall
        do {
            call = try client.unaryStream(url: url, path: path, headers: headers, message: message, timeout: timeout)
        } catch {
            return RawCallResult(messages: [], status: RPCClientStatus(code: .internal, message: "\(error)"))
        }
        var messages: [[UInt8]] = []
        do {
            for try await message in call { messages.append(message) }
        } catch {
            // The status says why.
        }
        return RawCallResult(messages: messages, status: await call.status)
    }
}

/// Lets the router ask the server, created after it, whether it is draining.
private final class DrainState: Sendable {
    let server = LockedValue<HTTP2Server?>(nil)
    var isDraining: Bool { server.withLock { $0 }?.isDraining ?? false }
}
