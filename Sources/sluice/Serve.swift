import ArgumentParser
import Dispatch
import Glibc
import Logging
import SluiceService
import SluiceTransport
import SluiceWire

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the Sluice server.")

    @Option(help: "Address to listen on. Binding beyond loopback exposes the server.")
    var host = "127.0.0.1"

    @Option(help: "TCP port to listen on (0 picks a free one).")
    var port = 8080

    @Option(help: "Event-loop threads (default: one per core).")
    var eventLoops: Int?

    @Option(help: "PEM certificate chain; with --tls-key, serves TLS with ALPN h2.")
    var tlsCert: String?

    @Option(help: "PEM private key for --tls-cert.")
    var tlsKey: String?

    @Option(help: "SETTINGS_MAX_CONCURRENT_STREAMS advertised to each client connection.")
    var maxStreamsPerConnection = 1000

    @Option(help: "Largest request message in bytes.")
    var maxMessageSize = 4 * 1024 * 1024

    @Option(help: "Close connections that have had no open stream for this long.")
    var idleTimeout = CLIDuration(.seconds(120))

    @Option(help: "On SIGTERM/SIGINT, how long in-flight streams may finish before they are cancelled.")
    var drainTimeout = CLIDuration(.seconds(30))

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        if let eventLoops, eventLoops < 1 { throw ValidationError("--event-loops must be at least 1") }
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("TLS needs both --tls-cert and --tls-key") }
        if maxStreamsPerConnection < 1 { throw ValidationError("--max-streams-per-connection must be at least 1") }
        if maxMessageSize < 1 { throw ValidationError("--max-message-size must be at least 1") }
    }

    func run() async throws {
        let logLevel = self.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = logLevel
            return handler
        }
        let logger = Logger(label: "sluice")

        var configuration = HTTP2ServerConfiguration()
        configuration.host = host
        configuration.port = port
        if let eventLoops { configuration.eventLoops = eventLoops }
        configuration.tlsCertificatePath = tlsCert
        configuration.tlsPrivateKeyPath = tlsKey
        configuration.idleTimeout = idleTimeout.duration
        configuration.limits.maxStreamsPerConnection = maxStreamsPerConnection
        configuration.limits.maxMessageSize = maxMessageSize

        let server = try HTTP2Server(configuration: configuration, router: ServiceRouter.make(), logger: logger)
        try server.start()
        let scheme = server.isTLS ? "https (TLS, ALPN h2)" : "h2c (HTTP/2 cleartext, prior knowledge)"
        print("sluice listening on \(host):\(server.port) \(scheme) with \(configuration.eventLoops) event loops; max \(maxStreamsPerConnection) streams per connection")
        fflush(nil)  // flush stdout now: scripts wait for this line

        let drainTimeout = self.drainTimeout.duration
        let signals = [SIGTERM, SIGINT].map { signalNumber in
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler {
                logger.notice("received signal \(signalNumber): draining for up to \(DurationParsing.format(drainTimeout))")
                Task { await server.shutdown(drainTimeout: drainTimeout) }
            }
            source.resume()
            return source
        }
        await server.waitUntilStopped()
        signals.forEach { $0.cancel() }
        logger.notice("stopped")
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
