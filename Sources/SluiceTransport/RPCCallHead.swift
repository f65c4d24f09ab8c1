import SluiceWire

/// The client's call timeout, armed when an RPC starts.
struct RPCDeadline: Equatable {
    var header: String
    var value: String
    var timeout: Duration
    /// Extra time the handler gets past `timeout` before the transport ends the call itself.
    var backstop: Duration
}

/// How an RPC's request headers decide its call, the same over HTTP/2 and HTTP/1.1: the protocol from the
/// content type, the message encodings, the method, the deadline. A value computed from the headers alone.
enum RPCCallHead {
    enum Decision: Equatable {
        /// Start the call: collect its one request message (inflated with `encodings.request`).
        case start(RPCProtocol, EncodingNegotiation, RPCDeadline?)
        /// End the call at once with this status, in the protocol's framing.
        case fail(RPCProtocol, StatusCode, String)
    }

    /// The RPC protocol a content type names, nil when it names none.
    static func rpcProtocol(contentType: String) -> RPCProtocol? {
        if contentType.hasPrefix("application/grpc-web-text") { return .grpcWebText }
        if contentType.hasPrefix("application/grpc-web") { return .grpcWeb }
        if contentType.hasPrefix("application/grpc") { return .grpc }
        if contentType == "application/connect+json" || contentType.hasPrefix("application/connect+json;") { return .connect }
        return nil
    }

    /// - Parameters:
    ///   - header: the request's header of a (lower-case) name.
    ///   - path: the request's path, nil without one.
    ///   - rpcRouteEnforcesDeadline: nil when no RPC serves the path, else whether its handler ends the call at
    ///     its deadline itself (the transport then only steps in `RPCRouter.deadlineBackstop` later).
    static func decide(
        _ rpcProtocol: RPCProtocol, header: (String) -> String?, path: String?, rpcRouteEnforcesDeadline: Bool?
    ) -> Decision {
        let encodingHeaders: EncodingNegotiation.Headers = rpcProtocol == .connect ? .connectStreaming : .grpc
        var encodings: EncodingNegotiation
        do {
            encodings = try EncodingNegotiation.negotiate(
                encoding: header(encodingHeaders.encoding), acceptEncoding: header(encodingHeaders.acceptEncoding),
                headers: encodingHeaders)
        } catch {
            return .fail(rpcProtocol, error.code, error.message)
        }
        // gRPC-Web leaves compression to the browser's own Content-Encoding: its clients inflate no messages.
        if rpcProtocol == .grpcWeb || rpcProtocol == .grpcWebText { encodings.response = .identity }
        guard path != nil, let enforcesDeadline = rpcRouteEnforcesDeadline else {
            return .fail(rpcProtocol, .unimplemented, "unknown method \(path ?? "(no :path)"): this server has no such RPC")
        }
        let timeoutHeader = rpcProtocol == .connect ? "connect-timeout-ms" : "grpc-timeout"
        var deadline: RPCDeadline?
        if let value = header(timeoutHeader) {
            let timeout = rpcProtocol == .connect ? Timeouts.parseConnectTimeout(value) : Timeouts.parseGRPCTimeout(value)
            guard let timeout else {
                return .fail(rpcProtocol, .invalidArgument, "malformed \(timeoutHeader) header '\(value)'")
            }
            deadline = RPCDeadline(
                header: timeoutHeader, value: value, timeout: timeout,
                backstop: enforcesDeadline ? RPCRouter.deadlineBackstop : .zero
            )
        }
        return .start(rpcProtocol, encodings, deadline)
    }

    /// The response head of a call that has a body: what it is, what this server accepts, and what a message
    /// flagged compressed uses (each message still says whether it is; small ones are not).
    static func responseHead(_ rpcProtocol: RPCProtocol, contentType: String?, encodings: EncodingNegotiation) -> [(String, String)] {
        let compressed = encodings.response == .identity ? nil : encodings.response.rawValue
        switch rpcProtocol {
        case .grpc, .grpcWeb, .grpcWebText:
            let defaultType =
                rpcProtocol == .grpc ? "application/grpc" : rpcProtocol == .grpcWeb ? "application/grpc-web" : "application/grpc-web-text"
            var head = [
                (":status", "200"), ("content-type", contentType ?? defaultType),
                ("grpc-accept-encoding", MessageEncoding.advertised),
            ]
            if let compressed { head.append(("grpc-encoding", compressed)) }
            return head
        case .connect:
            var head = [
                (":status", "200"), ("content-type", "application/connect+json"), ("connect-accept-encoding", MessageEncoding.advertised),
            ]
            if let compressed { head.append(("connect-content-encoding", compressed)) }
            return head
        }
    }

    /// The one request message of a call whose whole body has arrived (HTTP/1.1), inflated as `decoder` says;
    /// for gRPC-Web text the body is base64 first.
    static func singleMessage(of body: [UInt8], decoder: EnvelopeDecoder, base64: Bool = false) -> Result<[UInt8], RPCError> {
        var decoder = decoder
        if base64 {
            var text = Base64.Decoder()
            guard let bytes = text.feed(body), text.isComplete else {
                return .failure(RPCError(.invalidArgument, "a grpc-web-text request body is not valid base64"))
            }
            decoder.append(bytes)
        } else {
            decoder.append(body)
        }
        var message: [UInt8]?
        do {
            while let envelope = try decoder.next() {
                guard message == nil else {
                    return .failure(RPCError(.invalidArgument, "this method takes exactly one request message, but the client sent more"))
                }
                message = envelope.payload
            }
        } catch {
            return .failure(error)
        }
        if let description = decoder.partialMessageDescription { return .failure(RPCError(.invalidArgument, description)) }
        guard let message else {
            return .failure(RPCError(.invalidArgument, "this method takes exactly one request message, but the client sent none"))
        }
        return .success(message)
    }
}
