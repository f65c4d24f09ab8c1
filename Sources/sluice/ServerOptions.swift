import ArgumentParser
import Glibc
import SluiceClient
import SluiceIO
import SluiceTransport

/// How `call` and `loadtest` reach a Sluice server.
struct ServerOptions: ParsableArguments {
    @Option(help: "Server URL: http://host:port (h2c) or https://host:port (TLS, ALPN h2).")
    var target = "http://127.0.0.1:8080"
    @Option(help: "PEM CA certificates to verify an https target (default: the system's).")
    var caCert: String?
    @Option(help: "Bearer token for the server (default: $SLUICE_TOKEN).")
    var token: String?

    func validate() throws {
        do { _ = try HTTP2Target(url: target) } catch { throw ValidationError("--target: \(error)") }
    }

    /// The client settings these options give: the CA certificates, and the token given here or in SLUICE_TOKEN.
    func clientConfiguration() -> SluiceClientConfiguration {
        var configuration = SluiceClientConfiguration()
        configuration.http2.caCertificatePath = caCert
        if let token = token ?? getenv("SLUICE_TOKEN").map({ String(cString: $0) }), !token.isEmpty {
            configuration.bearerToken = token
        }
        return configuration
    }

    /// A client of the target with `configuration` (these options' by default); a CA file that cannot be used
    /// is reported with the flag that named it.
    func makeClient(_ configuration: SluiceClientConfiguration? = nil) throws -> SluiceClient {
        do {
            return try SluiceClient(target: target, configuration: configuration ?? clientConfiguration())
        } catch IOError.tlsFile(let message) {
            throw ValidationError("\(message) (--ca-cert)")
        } catch {
            throw ValidationError("\(error)")
        }
    }
}
