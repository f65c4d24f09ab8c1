/// How a call's messages are compressed, as named in `grpc-encoding` and Connect's encoding headers.
public enum MessageEncoding: String, Sendable, Equatable {
    case identity
    case gzip

    /// What this server accepts, for `grpc-accept-encoding` and `connect-accept-encoding`: exactly these.
    public static let advertised = "gzip,identity"

    /// A message's payload compressed, or nil to send it as it is: when this encoding is identity, the message
    /// is shorter than `minBytes` (below about 1 KiB gzip's 18 bytes of framing and its CPU cost outweigh the
    /// saving), or compressing did not make it smaller.
    public func compressed(_ payload: some Collection<UInt8>, minBytes: Int) -> [UInt8]? {
        guard self == .gzip, payload.count >= minBytes else { return nil }
        let compressed = Gzip.compress(payload)
        return compressed.count < payload.count ? compressed : nil
    }
}

/// The encodings of one call, decided from its request headers: what its request messages use (a compressed
/// message is inflated with it) and what its response messages may use (what the client accepts).
public struct EncodingNegotiation: Sendable, Equatable {
    /// The request and response header names of one protocol.
    public struct Headers: Sendable, Equatable {
        public var encoding: String
        public var acceptEncoding: String

        public init(encoding: String, acceptEncoding: String) {
            self.encoding = encoding
            self.acceptEncoding = acceptEncoding
        }

        public static let grpc = Headers(encoding: "grpc-encoding", acceptEncoding: "grpc-accept-encoding")
        /// Connect streaming calls; Connect unary uses HTTP's own content-encoding instead.
        public static let connectStreaming = Headers(encoding: "connect-content-encoding", acceptEncoding: "connect-accept-encoding")
    }

    public var request: MessageEncoding
    public var response: MessageEncoding

    public init(request: MessageEncoding = .identity, response: MessageEncoding = .identity) {
        self.request = request
        self.response = response
    }

    /// - Parameters:
    ///   - encoding: the request's encoding header, if any.
    ///   - acceptEncoding: the request's accept-encoding header, if any: a comma-separated list, whose
    ///     `;q=` weights are ignored except that `q=0` excludes an encoding.
    /// - Throws: UNIMPLEMENTED naming what is supported, for an encoding this server cannot inflate.
    public static func negotiate(encoding: String?, acceptEncoding: String?, headers: Headers) throws(RPCError) -> Self {
        var negotiation = Self()
        if let encoding {
            let name = encoding.trimmingWhitespace().lowercased()
            guard let known = MessageEncoding(rawValue: name) else {
                throw RPCError(
                    .unimplemented,
                    "\(headers.encoding) '\(encoding)' is not supported: send gzip or identity (\(headers.acceptEncoding): \(MessageEncoding.advertised))"
                )
            }
            negotiation.request = known
        }
        let accepted = (acceptEncoding ?? "").split(separator: ",").compactMap { item -> Substring? in
            let parts = item.split(separator: ";")
            guard let name = parts.first else { return nil }
            let excluded = parts.dropFirst().contains { parameter in
                let compact = parameter.filter { $0 != " " && $0 != "\t" }
                return compact.hasPrefix("q=") && Double(compact.dropFirst(2)) == 0
            }
            return excluded ? nil : name
        }
        if accepted.contains(where: { $0.trimmingWhitespace().lowercased() == "gzip" }) { negotiation.response = .gzip }
        return negotiation
    }
}

extension StringProtocol {
    fileprivate func trimmingWhitespace() -> String {
        let scalars = unicodeScalars.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed()
        return String(String.UnicodeScalarView(scalars))
    }
}
