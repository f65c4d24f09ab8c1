import COpenSSL
import Glibc

/// A client-side OpenSSL context: TLS 1.2 or newer, offers ALPN `h2` only, and verifies the
/// server's certificate chain (against a CA file, or the system's trust store) and name.
package final class TLSClientContext: @unchecked Sendable {
    package let context: OpaquePointer

    package init(caCertificatePath: String?) throws {
        guard let context = SSL_CTX_new(TLS_client_method()) else {
            throw IOError.configuration("TLS: cannot create an OpenSSL client context: \(TLSContext.lastError())")
        }
        self.context = context
        _ = sluice_SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION)
        _ = sluice_SSL_CTX_set_options(context, sluice_SSL_OP_NO_COMPRESSION | sluice_SSL_OP_NO_RENEGOTIATION)
        // The server's transmit path retries refused writes from a copied buffer, as ours does.
        _ = sluice_SSL_CTX_set_mode(context, Int(SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER))
        let alpn: [UInt8] = [2, UInt8(ascii: "h"), UInt8(ascii: "2")]
        // Unlike most OpenSSL calls, this one returns 0 on success.
        guard SSL_CTX_set_alpn_protos(context, alpn, UInt32(alpn.count)) == 0 else {
            throw IOError.configuration("TLS: cannot offer ALPN h2: \(TLSContext.lastError())")
        }
        if let caCertificatePath {
            guard SSL_CTX_load_verify_locations(context, caCertificatePath, nil) == 1 else {
                throw IOError.tlsFile(
                    "TLS: cannot load CA certificates from \(caCertificatePath): \(TLSContext.lastError()); it must be a PEM file")
            }
        } else {
            guard SSL_CTX_set_default_verify_paths(context) == 1 else {
                throw IOError.configuration("TLS: cannot load the system's CA certificates: \(TLSContext.lastError())")
            }
        }
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
    }

    deinit {
        SSL_CTX_free(context)
    }

    /// A connection's TLS state for `host`: SNI for names (RFC 6066 forbids it for addresses)
    /// and certificate name or address checking.
    package func makeConnection(fd: Int32, host: String) throws -> OpaquePointer {
        guard let ssl = SSL_new(context) else {
            throw IOError.configuration("TLS: SSL_new failed: \(TLSContext.lastError())")
        }
        SSL_set_fd(ssl, fd)
        SSL_set_connect_state(ssl)
        let checked: Int32
        if Self.isIPAddress(host) {
            checked = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host)
        } else {
            _ = sluice_SSL_set_tlsext_host_name(ssl, host)
            checked = SSL_set1_host(ssl, host)
        }
        guard checked == 1 else {
            SSL_free(ssl)
            throw IOError.configuration("TLS: cannot set the expected server name \(host): \(TLSContext.lastError())")
        }
        return ssl
    }

    /// Why a handshake failed, naming a certificate problem when that was the cause.
    package static func handshakeFailure(_ ssl: OpaquePointer) -> String {
        let verification = SSL_get_verify_result(ssl)
        if verification != X509_V_OK {
            return "the server's certificate was rejected: \(String(cString: X509_verify_cert_error_string(verification)))"
        }
        return TLSContext.lastError()
    }

    private static func isIPAddress(_ host: String) -> Bool {
        var buffer = in6_addr()
        return inet_pton(AF_INET, host, &buffer) == 1 || inet_pton(AF_INET6, host, &buffer) == 1
    }
}
