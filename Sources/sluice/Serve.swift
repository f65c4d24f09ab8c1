import ArgumentParser
import CLinux
import Glibc
import Logging
import Metrics
import Prometheus
import SluiceEngine
import SluiceIO
import SluiceService
import SluiceSimulator
import SluiceStore
import SluiceTransport
import SluiceUpstream
import SluiceWire

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the Sluice server.",
        discussion: """
            Upstream: the real Anthropic API when ANTHROPIC_API_KEY (or --api-key-file) is set, otherwise the \
            built-in simulator. Callers: bearer tokens from --keys-file or SLUICE_API_KEYS (comma-separated).
            """
    )

    // MARK: Listening
    @Option(help: "Address to listen on. Beyond loopback, caller keys are required unless --allow-unauthenticated.")
    var host = "127.0.0.1"
    @Option(help: "TCP port to listen on (0 picks a free one).")
    var port = 8080
    @Option(help: "Event-loop threads (default: one per core).")
    var eventLoops: Int?
    @Option(help: "PEM certificate chain; with --tls-key, serves TLS 1.2+ with ALPN h2 (or http/1.1).")
    var tlsCert: String?
    @Option(help: "PEM private key for --tls-cert.")
    var tlsKey: String?
    @Option(help: "SETTINGS_MAX_CONCURRENT_STREAMS advertised to each client connection.")
    var maxStreamsPerConnection = 1000
    @Option(help: "Largest request message in bytes.")
    var maxMessageSize = 4 * 1024 * 1024
    @Option(help: "Response messages this many bytes or longer are gzip-compressed for clients that accept gzip.")
    var compressMinBytes = 1024
    @Option(help: "A browser origin (https://app.example.com) whose pages may call the server: CORS (repeatable; none by default).")
    var corsOrigin: [String] = []
    @Option(
        help: "Client connections open at once; more are closed on arrival (default: what the open-file limit leaves after --max-active).")
    var maxConnections: Int?
    @Option(
        help:
            "Close connections that have had no open stream, or whose client has not opened its flow-control window to a waiting response, for this long."
    )
    var idleTimeout = CLIDuration(.seconds(120))
    @Option(help: "On SIGTERM/SIGINT, how long in-flight streams may finish before they are cancelled.")
    var drainTimeout = CLIDuration(.seconds(30))

    // MARK: Scheduler
    @Option(help: "Streams talking to the upstream at once.")
    var maxActive = 256
    @Option(help: "Streams waiting for a slot, beyond which calls fail with RESOURCE_EXHAUSTED.")
    var maxQueued = 1024
    @Option(help: "Longest wait in the queue.")
    var queueTimeout = CLIDuration(.seconds(30))
    @Option(help: "Streams one caller key may run at once (default: no per-key limit).")
    var maxActivePerKey: Int?
    @Option(help: "Longest a stream may run.")
    var maxStreamDuration = CLIDuration(.seconds(600))
    @Option(help: "Retries of an interrupted upstream stream.")
    var maxRetries = 3
    @Option(help: "How long a stream whose client vanished keeps running, awaiting Resume.")
    var abandonGrace = CLIDuration(.seconds(30))
    @Option(help: "How long a finished stream stays resumable (its events are kept in memory until then).")
    var retention = CLIDuration(.seconds(60))
    @Option(help: "Replay buffer per stream, in bytes (what Resume can replay).")
    var replayBufferBytes = 1 << 20
    @Option(help: "Server-Sent Events: a `: keepalive` comment after this long without an event.")
    var sseHeartbeat = CLIDuration(.seconds(15))

    // MARK: Tools
    @Option(help: "A directory server tools may read (repeatable). Without one, no file tool is offered.")
    var toolRoot: [String] = []
    @Option(help: "Longest a tool call may run.")
    var toolTimeout = CLIDuration(.seconds(60))
    @Option(help: "Largest file read_file returns, and largest file search_files scans, in bytes.")
    var toolMaxBytes = 64 * 1024 * 1024
    @Option(help: "Largest tool result passed back to the model, in bytes (longer ones are cut, with a note).")
    var toolResultMaxBytes = 1 << 20
    @Option(help: "Model turns per stream; each tool round trip is a turn.")
    var maxTurns = 8
    @Option(
        help:
            "Server tools offered on POST /v1/messages, comma-separated (read_file,list_directory,search_files; needs --tool-root). Default: none there."
    )
    var messagesServerTools = ""

    // MARK: Upstream
    @Option(help: "Anthropic API base URL.")
    var upstreamURL = UpstreamConfiguration.defaultBaseURL
    @Option(help: "File holding the Anthropic API key (instead of ANTHROPIC_API_KEY). Never pass the key itself as a flag.")
    var apiKeyFile: String?
    @Option(help: "CA bundle for verifying the upstream's TLS certificate (default: the system's).")
    var caBundle: String?
    @Flag(help: "--upstream-url is a `sluice simulate` server: no API key needed, requests may carry `simulation`.")
    var upstreamIsSimulator = false
    @Option(help: "Give up on an upstream attempt that sends no first byte for this long.")
    var firstTokenTimeout = CLIDuration(.seconds(60))
    @Option(help: "Give up on an upstream attempt that sends nothing but pings for this long.")
    var upstreamIdleTimeout = CLIDuration(.seconds(30))
    @Option(
        help:
            "Most streams multiplexed on one upstream HTTP/2 connection; more streams open more connections. libcurl 7.88 runs every stream of a connection for each read on it, so fewer per connection cost less CPU."
    )
    var upstreamStreamsPerConnection = 10

    // MARK: Callers
    @Option(help: "File of caller bearer tokens, one per line, # comments.")
    var keysFile: String?
    @Flag(help: "Allow binding beyond loopback without caller keys.")
    var allowUnauthenticated = false

    // MARK: Store
    @Option(
        help:
            "Where streams are kept: memory (this replica only) or redis://[user:password@]host:port[/db], a log every replica shares (Resume, SSE reconnect and Cancel on any replica)."
    )
    var store = "memory"
    @Option(help: "File holding the Redis password (instead of SLUICE_STORE_PASSWORD or the URL's).")
    var storePasswordFile: String?
    @Option(help: "This replica's name in the store's owner leases (default: the host name and process id).")
    var replicaID: String?
    @Option(
        help:
            "With a shared store: a running stream's owner lease lasts this long; once it lapses (the replica died or hung) another replica takes the stream over."
    )
    var leaseTtl = CLIDuration(.seconds(5))
    @Option(help: "With a shared store: how often a replica renews the leases of the streams it runs (well under --lease-ttl).")
    var leaseRenew = CLIDuration(.seconds(1))
    @Option(
        help:
            "With a shared store: on SIGTERM/SIGINT, how long running streams may finish before they are handed off to other replicas (well under --drain-timeout)."
    )
    var handoffAfter = CLIDuration(.seconds(2))

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    @Option(help: "Log lines as human-readable text or as JSON objects.")
    var logFormat: LogFormat = .text

    @Option(help: "JSON file of settings (flag names as keys); flags and SLUICE_* variables take precedence.")
    var config: String?

    func run() async throws {
        let command = try await LayeredSettings.resolve(layered, validate: { try $0.validateSettings() })
        do { try await command.serve() } catch let error as ValidationError { throw Sluice.configurationFailure(error) }
    }

    /// This command with each setting taken from the highest layer that sets it (flag, SLUICE_* variable, --config file).
    func layered(_ settings: LayeredSettings) async throws -> Serve {
        var command = self
        command.host = try await settings.string("host", host)
        command.port = try await settings.int("port", port)
        command.eventLoops = try await settings.int("event-loops", eventLoops)
        command.tlsCert = try await settings.string("tls-cert", tlsCert)
        command.tlsKey = try await settings.string("tls-key", tlsKey)
        command.maxStreamsPerConnection = try await settings.int("max-streams-per-connection", maxStreamsPerConnection)
        command.maxMessageSize = try await settings.int("max-message-size", maxMessageSize)
        command.compressMinBytes = try await settings.int("compress-min-bytes", compressMinBytes)
        command.corsOrigin = try await settings.strings("cors-origin", corsOrigin)
        command.maxConnections = try await settings.int("max-connections", maxConnections)
        command.idleTimeout = try await settings.duration("idle-timeout", idleTimeout)
        command.drainTimeout = try await settings.duration("drain-timeout", drainTimeout)
        command.maxActive = try await settings.int("max-active", maxActive)
        command.maxQueued = try await settings.int("max-queued", maxQueued)
        command.queueTimeout = try await settings.duration("queue-timeout", queueTimeout)
        command.maxActivePerKey = try await settings.int("max-active-per-key", maxActivePerKey)
        command.maxStreamDuration = try await settings.duration("max-stream-duration", maxStreamDuration)
        command.maxRetries = try await settings.int("max-retries", maxRetries)
        command.abandonGrace = try await settings.duration("abandon-grace", abandonGrace)
        command.retention = try await settings.duration("retention", retention)
        command.replayBufferBytes = try await settings.int("replay-buffer-bytes", replayBufferBytes)
        command.sseHeartbeat = try await settings.duration("sse-heartbeat", sseHeartbeat)
        command.toolRoot = try await settings.strings("tool-root", toolRoot)
        command.toolTimeout = try await settings.duration("tool-timeout", toolTimeout)
        command.toolMaxBytes = try await settings.int("tool-max-bytes", toolMaxBytes)
        command.toolResultMaxBytes = try await settings.int("tool-result-max-bytes", toolResultMaxBytes)
        command.maxTurns = try await settings.int("max-turns", maxTurns)
        command.messagesServerTools = try await settings.string("messages-server-tools", messagesServerTools)
        command.upstreamURL = try await settings.string("upstream-url", upstreamURL)
        command.apiKeyFile = try await settings.string("api-key-file", apiKeyFile)
        command.caBundle = try await settings.string("ca-bundle", caBundle)
        command.upstreamIsSimulator = try await settings.bool("upstream-is-simulator", upstreamIsSimulator)
        command.firstTokenTimeout = try await settings.duration("first-token-timeout", firstTokenTimeout)
        command.upstreamIdleTimeout = try await settings.duration("upstream-idle-timeout", upstreamIdleTimeout)
        command.upstreamStreamsPerConnection = try await settings.int("upstream-streams-per-connection", upstreamStreamsPerConnection)
        command.keysFile = try await settings.string("keys-file", keysFile)
        command.allowUnauthenticated = try await settings.bool("allow-unauthenticated", allowUnauthenticated)
        command.store = try await settings.string("store", store)
        command.storePasswordFile = try await settings.string("store-password-file", storePasswordFile)
        command.leaseTtl = try await settings.duration("lease-ttl", leaseTtl)
        command.leaseRenew = try await settings.duration("lease-renew", leaseRenew)
        command.handoffAfter = try await settings.duration("handoff-after", handoffAfter)
        command.replicaID = try await settings.string("replica-id", replicaID)
        command.logLevel = try await settings.choice("log-level", logLevel)
        command.logFormat = try await settings.choice("log-format", logFormat)
        return command
    }

    /// Checks the settings from every layer; ArgumentParser's `validate()` would see only the command line's.
    func validateSettings() throws {
        if let eventLoops, eventLoops < 1 { throw ValidationError("--event-loops must be at least 1") }
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("TLS needs both --tls-cert and --tls-key") }
        if maxStreamsPerConnection < 1 { throw ValidationError("--max-streams-per-connection must be at least 1") }
        if maxMessageSize < 1 { throw ValidationError("--max-message-size must be at least 1") }
        if compressMinBytes < 0 { throw ValidationError("--compress-min-bytes must be 0 or more") }
        if maxActive < 1 { throw ValidationError("--max-active must be at least 1") }
        if maxQueued < 0 { throw ValidationError("--max-queued must be 0 or more") }
        if let maxActivePerKey, maxActivePerKey < 1 { throw ValidationError("--max-active-per-key must be at least 1") }
        if maxRetries < 0 { throw ValidationError("--max-retries must be 0 or more") }
        if upstreamStreamsPerConnection < 1 { throw ValidationError("--upstream-streams-per-connection must be at least 1") }
        if maxTurns < 1 { throw ValidationError("--max-turns must be at least 1") }
        if toolMaxBytes < 0 { throw ValidationError("--tool-max-bytes must be 0 or more") }
        if toolResultMaxBytes < 1 { throw ValidationError("--tool-result-max-bytes must be at least 1") }
        if sseHeartbeat.duration <= .zero { throw ValidationError("--sse-heartbeat must be more than 0") }
        if leaseRenew.duration <= .zero || leaseRenew.duration >= leaseTtl.duration {
            throw ValidationError(
                "--lease-renew must be more than 0 and less than --lease-ttl (\(leaseTtl)), or leases lapse while their owner runs")
        }
        if store != "memory" {
            do { _ = try RedisEndpoint(url: store) } catch { throw ValidationError("--store: \(error) (or memory)") }
        }
        if store != "memory", handoffAfter.duration < .zero || handoffAfter.duration >= drainTimeout.duration {
            throw ValidationError(
                "--handoff-after must be 0 or more and less than --drain-timeout (\(drainTimeout)), or the drain ends streams before they are handed off"
            )
        }
        if let unknown = messagesServerToolNames.first(where: { !ServerToolNames.all.contains($0) }) {
            throw ValidationError(
                "--messages-server-tools: '\(unknown)' is not a Sluice server tool (\(ServerToolNames.all.sorted().joined(separator: ", ")))"
            )
        }
        if !messagesServerToolNames.isEmpty && toolRoot.isEmpty {
            throw ValidationError("--messages-server-tools needs --tool-root: without one, no server tool is offered")
        }
    }

    /// `--messages-server-tools` as names.
    var messagesServerToolNames: Set<String> {
        Set(messagesServerTools.split(separator: ",").map { String($0.filter { !$0.isWhitespace }) }.filter { !$0.isEmpty })
    }

    private func serve() async throws {
        LogFormat.bootstrap(logFormat, level: logLevel)
        let logger = Logger(label: "sluice")
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(MetricsService.makeFactory(registry: registry))

        // Every stream may hold a client connection and an upstream transfer.
        let descriptorLimit = raiseDescriptorLimit()
        let environment = UpstreamConfiguration.processEnvironment()
        let tokens = try callerTokens(environment: environment)
        if tokens.isEmpty && !Self.isLoopback(host) && !allowUnauthenticated {
            throw ValidationError(
                "refusing to listen on \(host) without caller keys: set --keys-file or SLUICE_API_KEYS, or pass --allow-unauthenticated"
            )
        }

        // The upstream: the real API with a key, otherwise the simulator on a private loopback port.
        var upstreamConfiguration = UpstreamConfiguration(
            baseURL: upstreamURL, apiKey: try UpstreamConfiguration.loadAPIKey(environment: environment, keyFile: apiKeyFile),
            caBundlePath: caBundle, firstByteTimeout: firstTokenTimeout.duration, idleTimeout: upstreamIdleTimeout.duration,
            maxConcurrentStreams: upstreamStreamsPerConnection
        )
        var simulatorServer: HTTP2Server?
        var sampledGauges: [MetricsService.SampledGauge] = []
        if upstreamConfiguration.apiKey == nil && !upstreamIsSimulator {
            var router = RPCRouter()
            let simulator = AnthropicSimulator()
            simulator.register(in: &router)
            sampledGauges += [
                .init(name: "sluice_simulator_active_streams", help: "Responses the built-in simulator is streaming now") {
                    Double(simulator.activeStreams)
                },
                .init(name: "sluice_simulator_aborted_streams", help: "Simulator responses ended because the client went away") {
                    Double(simulator.abortedStreams)
                },
                .init(name: "sluice_simulator_requests", help: "Requests the built-in simulator received") {
                    Double(simulator.requestCount)
                },
            ]
            var simulatorConfiguration = HTTP2ServerConfiguration()
            simulatorConfiguration.port = 0
            simulatorConfiguration.eventLoops = 1
            let server = try HTTP2Server(configuration: simulatorConfiguration, router: router, logger: logger)
            try server.start()
            upstreamConfiguration.baseURL = "http://127.0.0.1:\(server.port)"
            simulatorServer = server
        }
        // The server's loops also drive the upstream transfers: a stream's job, its transfer and its client's
        // connection then share one thread.
        let loops = try (0..<(eventLoops ?? HTTP2ServerConfiguration().eventLoops)).map { try EventLoop(index: $0) }
        let upstream = try UpstreamClient(configuration: upstreamConfiguration, logger: logger, loops: loops)
        sampledGauges.append(
            .init(name: "sluice_upstream_open_transfers", help: "libcurl transfers to the upstream now") {
                Double(upstream.openTransfers)
            })

        var engineConfiguration = EngineConfiguration()
        engineConfiguration.limits = Admission.Limits(maxActive: maxActive, maxQueued: maxQueued, maxActivePerKey: maxActivePerKey)
        engineConfiguration.queueTimeout = queueTimeout.duration
        engineConfiguration.retry.maxRetries = maxRetries
        engineConfiguration.maxStreamDuration = maxStreamDuration.duration
        engineConfiguration.abandonGrace = abandonGrace.duration
        engineConfiguration.retention = retention.duration
        engineConfiguration.replayBufferBytes = replayBufferBytes
        engineConfiguration.upstreamIsSimulator = simulatorServer != nil || upstreamIsSimulator
        engineConfiguration.toolTimeout = toolTimeout.duration
        engineConfiguration.maxTurns = maxTurns
        engineConfiguration.maxToolResultBytes = toolResultMaxBytes
        if !toolRoot.isEmpty {
            let sandbox: ToolSandbox
            do { sandbox = try ToolSandbox(roots: toolRoot) } catch { throw ValidationError("--tool-root: \(error)") }
            engineConfiguration.tools = [
                ReadFileTool(sandbox: sandbox, maxBytes: toolMaxBytes), ListDirectoryTool(sandbox: sandbox),
                SearchFilesTool(sandbox: sandbox, maxBytes: toolMaxBytes),
            ]
        }
        let redisStore = try makeRedisStore(environment: environment, loops: loops, logger: logger)
        if let redisStore { engineConfiguration.store = redisStore }
        let engine = StreamEngine(configuration: engineConfiguration, upstream: upstream, logger: logger, sweepLoop: loops[0])

        // Running out of descriptors aborts the process (libdispatch needs some for its thread pool):
        // upstream sockets (twice as many with the in-process h2c simulator: its client and server side) and a
        // reserve come first, connections get the rest.
        let upstreamDescriptors = upstream.socketsNeeded(forTransfers: maxActive) * (simulatorServer != nil ? 2 : 1)
        let available = descriptorLimit - Self.reservedDescriptors - upstreamDescriptors
        guard available >= 16 else {
            throw ValidationError(
                "--max-active \(maxActive) needs about \(upstreamDescriptors + Self.reservedDescriptors + 16) open files, but the limit is \(descriptorLimit): lower --max-active or raise the limit (ulimit -n)"
            )
        }
        var configuration = HTTP2ServerConfiguration()
        configuration.limits.maxConnections = min(maxConnections ?? available, available)
        configuration.host = host
        configuration.port = port
        configuration.eventLoops = loops.count
        configuration.tlsCertificatePath = tlsCert
        configuration.tlsPrivateKeyPath = tlsKey
        configuration.idleTimeout = idleTimeout.duration
        configuration.limits.maxStreamsPerConnection = maxStreamsPerConnection
        configuration.limits.maxMessageSize = maxMessageSize
        configuration.compressMinBytes = compressMinBytes
        configuration.cors = CORSPolicy(allowedOrigins: Set(corsOrigin))
        configuration.messageDelivered = MetricsService.deliveryLatencyRecorder()

        let console = ConsoleService()
        for file in console.missingVendorFiles {
            logger.warning(
                "console: \(file.path) is missing, so the page at / shows answers as plain text: install the Debian package \(file.package)"
            )
        }
        let serverReference = ServerReference()
        let router = ServiceRouter.make(
            engine: engine, authentication: CallerAuthentication(tokens: tokens), registry: registry,
            sampledGauges: sampledGauges, sseHeartbeat: sseHeartbeat.duration, console: console,
            messagesServerTools: messagesServerToolNames, isDraining: { serverReference.isDraining },
            storeReady: { redisStore?.hasBeenUp ?? true }
        )
        let server: HTTP2Server
        do {
            server = try HTTP2Server(configuration: configuration, router: router, logger: logger, loops: loops)
        } catch IOError.tlsFile(let message) {
            throw ValidationError("\(message) (--tls-cert, --tls-key)")
        }
        serverReference.set(server)
        do { try server.start() } catch IOError.configuration(let message) { throw ValidationError("\(message) (--host, --port)") }
        redisStore?.start()

        let scheme = server.isTLS ? "https (TLS, ALPN h2 or http/1.1)" : "h2c (HTTP/2 cleartext, prior knowledge) and HTTP/1.1"
        let upstreamDescription =
            simulatorServer != nil
            ? "built-in simulator (no ANTHROPIC_API_KEY set)"
            : upstreamIsSimulator ? "simulator at \(upstreamConfiguration.baseURL)" : "Anthropic API at \(upstreamConfiguration.baseURL)"
        let perKey = maxActivePerKey.map { ", \($0) per key" } ?? ""
        let messagesTools =
            messagesServerToolNames.isEmpty ? "" : " (on /v1/messages: \(messagesServerToolNames.sorted().joined(separator: ", ")))"
        print(
            "sluice listening on \(host):\(server.port) \(scheme); upstream: \(upstreamDescription); limits: \(maxActive) active\(perKey), \(maxQueued) queued, \(maxStreamsPerConnection) streams per connection; callers: \(tokens.isEmpty ? "unauthenticated" : "\(tokens.count) keys"); tools: \(toolRoot.isEmpty ? "none" : "read_file, list_directory, search_files in \(toolRoot.joined(separator: ", "))")\(messagesTools)"
        )
        fflush(nil)  // scripts wait for this line

        // On a loop, so that its sleeps are that loop's timers; it trims only when no stream is running.
        let trimmer = Task(executorPreference: loops[0]) { await Self.returnMemoryWhenIdle(engine: engine, upstream: upstream) }
        let handOffWindow = handoffAfter.duration
        await server.runUntilSignalled(drainTimeout: drainTimeout.duration, logger: logger) {
            await engine.handOffRunningStreams(after: handOffWindow)
        }
        trimmer.cancel()
        await upstream.shutdown()
        redisStore?.close()
        await simulatorServer?.shutdown(drainTimeout: .zero)
        logger.notice("stopped")
    }

    /// glibc keeps the heap a burst of streams grew to (freed, fragmented) unless asked to give it back: once
    /// per quiet spell, with no stream known and no upstream transfer open, return it to the system. Without
    /// this, resident memory after 100,000 streams stood 45 % above the figure after 10,000 (Benchmarks/soak).
    private static func returnMemoryWhenIdle(engine: StreamEngine, upstream: UpstreamClient) async {
        var trimmedThisSpell = false
        while (try? await EventLoop.sleep(for: .seconds(5))) != nil {
            let idle = engine.streamCount == 0 && upstream.openTransfers == 0
            if idle && !trimmedThisSpell { malloc_trim(0) }
            trimmedThisSpell = idle
        }
    }

    /// The Redis store `--store` names (nil for memory), its password from --store-password-file, SLUICE_STORE_PASSWORD
    /// or the URL, in that order.
    private func makeRedisStore(environment: [String: String], loops: [EventLoop], logger: Logger) throws -> RedisStreamStore? {
        guard store != "memory" else { return nil }
        var endpoint = try RedisEndpoint(url: store)
        if let storePasswordFile {
            guard let text = Self.readFile(storePasswordFile) else {
                throw ValidationError("cannot read --store-password-file \(storePasswordFile): \(String(cString: strerror(errno)))")
            }
            endpoint.password = String(text.reversed().drop { $0.isWhitespace }.reversed())
        } else if let password = environment["SLUICE_STORE_PASSWORD"], !password.isEmpty {
            endpoint.password = password
        }
        var hostName = [CChar](repeating: 0, count: 256)
        gethostname(&hostName, hostName.count)
        let host = String(decoding: hostName.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let replica = replicaID ?? "\(host)-\(getpid())"
        var configuration = RedisStreamStore.Configuration(
            endpoint: endpoint, replicaID: replica, retention: retention.duration, replayBufferBytes: replayBufferBytes)
        configuration.leaseDuration = leaseTtl.duration
        configuration.leaseRenewal = leaseRenew.duration
        logger.info("stream store", metadata: ["store": "\(endpoint)", "replica": "\(replica)"])
        return RedisStreamStore(configuration: configuration, loops: loops, logger: logger)
    }

    private static func readFile(_ path: String) -> String? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var text = ""
        var buffer = [CChar](repeating: 0, count: 4096)
        while fgets(&buffer, Int32(buffer.count), file) != nil {
            text += String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        return text
    }

    private func callerTokens(environment: [String: String]) throws -> [String] {
        var tokens: [String] = []
        if let keysFile {
            guard let file = fopen(keysFile, "r") else {
                throw ValidationError("cannot read --keys-file \(keysFile): \(String(cString: strerror(errno)))")
            }
            defer { fclose(file) }
            var text = ""
            var buffer = [CChar](repeating: 0, count: 4096)
            while fgets(&buffer, Int32(buffer.count), file) != nil {
                text += String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
            tokens += CallerAuthentication.parseKeysFile(text)
        }
        if let fromEnvironment = environment["SLUICE_API_KEYS"] {
            tokens += fromEnvironment.split(separator: ",").map { String($0.trimmingPrefix(while: \.isWhitespace)) }.map {
                String($0.reversed().drop { $0.isWhitespace }.reversed())
            }.filter { !$0.isEmpty }
        }
        return tokens
    }

    /// Descriptors kept for logs, the epoll and event fds, libcurl's own, TLS files and libdispatch.
    static let reservedDescriptors = 128

    static func isLoopback(_ host: String) -> Bool {
        host == "127.0.0.1" || host == "::1" || host == "localhost" || host.hasPrefix("127.")
    }
}

/// Lets routes ask the server, created after them, whether it is draining.
final class ServerReference: Sendable {
    private let server = LockedValue<HTTP2Server?>(nil)
    func set(_ value: HTTP2Server) { server.withLock { $0 = value } }
    var isDraining: Bool { server.withLock { $0 }?.isDraining ?? false }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
