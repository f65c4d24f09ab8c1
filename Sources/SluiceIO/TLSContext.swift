import COpenSSL

/// A server-side OpenSSL context: TLS 1.2 or newer, modern AEAD ciphers only, ALPN `h2` or `http/1.1`.
public final class TLSContext: @unchecked Sendable {
    package let context: OpaquePointer

    public init(certificatePath: String, privateKeyPath: String) throws {
        guard let context = SSL_CTX_new(TLS_server_method()) else {
            throw IOError.configuration("TLS: cannot create an OpenSSL context: \(Self.lastError())")
        }
        self.context = context
        _ = sluice_SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION)
        _ = sluice_SSL_CTX_set_options(
            context,
            sluice_SSL_OP_NO_COMPRESSION | sluice_SSL_OP_NO_RENEGOTIATION | sluice_SSL_OP_CIPHER_SERVER_PREFERENCE
        )
        // HTTP/2 (RFC 9113 §9.2.2) forbids the old CBC suites for TLS 1.2.
        let tls12Ciphers =
            "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
            + "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
        guard SSL_CTX_set_cipher_list(context, tls12Ciphers) == 1 else {
            throw IOError.configuration("TLS: cipher list rejected: \(Self.lastError())")
        }
        _ = sluice_SSL_CTX_set_mode(context, Int(SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER))
        guard SSL_CTX_use_certificate_chain_file(context, certificatePath) == 1 else {
            throw IOError.tlsFile(
                "TLS: cannot load the certificate chain from \(certificatePath): \(Self.lastError()); it must be a PEM file")
        }
        guard SSL_CTX_use_PrivateKey_file(context, privateKeyPath, SSL_FILETYPE_PEM) == 1 else {
            throw IOError.tlsFile("TLS: cannot load the private key from \(privateKeyPath): \(Self.lastError()); it must be a PEM key")
        }
        guard SSL_CTX_check_private_key(context) == 1 else {
            throw IOError.tlsFile("TLS: the private key does not match the certificate: \(Self.lastError())")
        }
        SSL_CTX_set_alpn_select_cb(
            context,
            { _, out, outLength, input, inputLength, _ in
                // h2 if the client offers it, else http/1.1; a client offering neither is refused.
                guard let input, let out, let outLength else { return SSL_TLSEXT_ERR_ALERT_FATAL }
                let offered = UnsafeBufferPointer(start: input, count: Int(inputLength))
                for wanted in TLSContext.supportedProtocols {
                    var index = 0
                    while index < offered.count {
                        let length = Int(offered[index])
                        let start = index + 1
                        if start + length <= offered.count, offered[start..<start + length].elementsEqual(wanted) {
                            out.pointee = UnsafePointer(input + start)
                            outLength.pointee = UInt8(length)
                            return SSL_TLSEXT_ERR_OK
                        }
                        index = start + length
                    }
                }
                return SSL_TLSEXT_ERR_ALERT_FATAL
            }, nil)
    }

    /// ALPN protocol names in order of preference.
    private static let supportedProtocols = [Array("h2".utf8), Array("http/1.1".utf8)]

    deinit {
        SSL_CTX_free(context)
    }

    package static func lastError() -> String {
        let code = ERR_get_error()
        guard code != 0 else { return "no OpenSSL error recorded" }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
