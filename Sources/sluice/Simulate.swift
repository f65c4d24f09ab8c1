import ArgumentParser
import Glibc
import Logging
import SluiceIO
import SluiceSimulator
import SluiceTransport
import SluiceUpstream

struct Simulate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a simulator of the Anthropic Messages API (POST /v1/messages) over h2c.",
        discussion: """
            Deterministic responses (streamed as SSE with "stream": true), controlled per request by the \
            sluice-simulation header: seed, output_tokens, token_interval_ms, first_token_delay_ms, \
            ping_interval_ms, tool_calls, tool_preamble, prefill, fault. See schema/simulation.schema.json.
            """
    )

    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "TCP port to listen on (0 picks a free one).")
    var port = 8090

    @Option(help: "Event-loop threads.")
    var eventLoops = 2

    @Option(help: "PEM certificate chain; with --tls-key, serves TLS with ALPN h2, as the real API does (libcurl then multiplexes).")
    var tlsCert: String?

    @Option(help: "PEM private key for --tls-cert.")
    var tlsKey: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .notice

    @Option(help: "Log lines as human-readable text or as JSON objects.")
    var logFormat: LogFormat = .text

    @Option(help: "JSON file of settings (flag names as keys); flags and SLUICE_* variables take precedence.")
    var config: String?

    func run() async throws {
        let command = try await LayeredSettings.resolve(layered, validate: { try $0.validateSettings() })
        do { try await command.simulate() } catch let error as ValidationError { throw Sluice.configurationFailure(error) }
    }

    /// This command with each setting taken from the highest layer that sets it (flag, SLUICE_* variable, --config file).
    func layered(_ settings: LayeredSettings) async throws -> Simulate {
        var command = self
        command.host = try await settings.string("host", host)
        command.port = try await settings.int("port", port)
        command.eventLoops = try await settings.int("event-loops", eventLoops)
        command.tlsCert = try await settings.string("tls-cert", tlsCert)
        command.tlsKey = try await settings.string("tls-key", tlsKey)
        command.logLevel = try await settings.choice("log-level", logLevel)
        command.logFormat = try await settings.choice("log-format", logFormat)
        return command
    }

    /// Checks the settings from every layer; ArgumentParser's `validate()` would see only the command line's.
    func validateSettings() throws {
        if eventLoops < 1 { throw ValidationError("--event-loops must be at least 1") }
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("TLS needs both --tls-cert and --tls-key") }
    }

    private func simulate() async throws {
        LogFormat.bootstrap(logFormat, level: logLevel)
        let logger = Logger(label: "sluice.simulator")

        var configuration = HTTP2ServerConfiguration()
        configuration.host = host
        configuration.port = port
        configuration.eventLoops = eventLoops
        configuration.tlsCertificatePath = tlsCert
        configuration.tlsPrivateKeyPath = tlsKey
        var router = RPCRouter()
        let simulator = AnthropicSimulator()
        simulator.register(in: &router)

        let server: HTTP2Server
        do {
            server = try HTTP2Server(configuration: configuration, router: router, logger: logger)
        } catch IOError.tlsFile(let message) {
            throw ValidationError("\(message) (--tls-cert, --tls-key)")
        }
        do { try server.start() } catch IOError.configuration(let message) { throw ValidationError("\(message) (--host, --port)") }
        print("sluice simulator listening on \(host):\(server.port)\(server.isTLS ? " (TLS, ALPN h2 or http/1.1)" : "")")
        fflush(nil)  // scripts and tests wait for this line

        await server.runUntilSignalled(drainTimeout: .seconds(1), logger: logger)
    }
}
