import ArgumentParser
import Glibc
import Logging
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

    func validate() throws {
        if eventLoops < 1 { throw ValidationError("--event-loops must be at least 1") }
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("TLS needs both --tls-cert and --tls-key") }
    }

    func run() async throws {
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

        let server = try HTTP2Server(configuration: configuration, router: router, logger: logger)
        try server.start()
        print("sluice simulator listening on \(host):\(server.port)\(server.isTLS ? " (TLS, ALPN h2 or http/1.1)" : "")")
        fflush(nil)  // scripts and tests wait for this line

        await server.runUntilSignalled(drainTimeout: .seconds(1), logger: logger)
    }
}
