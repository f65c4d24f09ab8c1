import CNGHTTP2
import SluiceIO
import SluiceWire

/// One client call: the request to send, the response as it arrives, and how it ended.
/// Created on the caller's thread, then confined to its loop.
final class HTTP2ClientStream {
    let headers: [(String, String)]
    /// The enveloped request message.
    let body: [UInt8]
    var bodyOffset = 0
    private let timeout: Duration?
    /// Connect streaming: the status arrives in an end-stream message, not in trailers.
    private let isConnect: Bool
    private var connectStatus: RPCClientStatus?
    private let observer: any RPCClientCallObserver
    private var decoder: EnvelopeDecoder

    private var loop: EventLoop?
    private(set) weak var pool: HTTP2ClientPool?
    /// Set while the stream is on a connection (nghttp2 has assigned `id`).
    weak var connection: HTTP2ClientConnection?
    var id: Int32 = -1
    /// Times nghttp2 refused to start the stream (GOAWAY, REFUSED_STREAM), each retried elsewhere.
    var refusals = 0

    private var httpStatus: Int?
    private var contentType: String?
    private var grpcStatus: String?
    private var grpcMessage: String?
    /// A non-gRPC response's body, kept (bounded) to explain the error.
    private var errorBody: [UInt8] = []
    /// How the client itself ended the call (cancel, deadline, bad message), overriding the rest.
    private var localEnd: RPCClientStatus?
    private var deadlineTimer: TimerID?
    private(set) var finished = false

    init(
        headers: [(String, String)], body: [UInt8], isConnect: Bool = false, timeout: Duration?, maxMessageSize: Int,
        observer: any RPCClientCallObserver
    ) {
        self.headers = headers
        self.body = body
        self.isConnect = isConnect
        self.timeout = timeout
        self.observer = observer
        decoder = EnvelopeDecoder(maxMessageSize: maxMessageSize)
    }

    /// The server enforces `grpc-timeout` and may end the call with its own final message; the
    /// client cuts the call only this long after, in case the server does not.
    static let deadlineBackstop: Duration = .seconds(1)

    /// On the loop, before the pool sees the stream: the deadline runs from here.
    func begin(on loop: EventLoop, pool: HTTP2ClientPool) {
        self.loop = loop
        self.pool = pool
        if let timeout {
            deadlineTimer = loop.scheduleTimer(after: timeout + Self.deadlineBackstop) { [weak self] in
                guard let self else { return }
                deadlineTimer = nil
                cancel(.deadlineExceeded, "deadline exceeded: no status within the call's timeout of \(DurationParsing.format(timeout))")
            }
        }
    }

    /// A refused stream may be sent again unless it already ended here or its response began.
    var mayRetry: Bool { !finished && localEnd == nil && httpStatus == nil && refusals < 3 }

    // MARK: Response (called from nghttp2 callbacks)

    func addHeader(name: String, value: String) {
        switch name {
        case ":status":
            guard let status = Int(value) else { return }
            // 1xx responses are informational; the real one follows.
            if status >= 200 { httpStatus = status }
        case "content-type": contentType = value
        case "grpc-status": grpcStatus = value
        case "grpc-message": grpcMessage = value
        default: break
        }
    }

    func receiveData(_ bytes: UnsafeRawBufferPointer) {
        guard localEnd == nil else { return }
        guard isGRPCResponse else {
            errorBody.append(contentsOf: bytes.prefix(max(0, 512 - errorBody.count)))
            return
        }
        decoder.append(bytes)
        do {
            while let envelope = try decoder.next() {
                guard isConnect, envelope.flags.contains(.endStream) else {
                    observer.callReceived(envelope.payload)
                    continue
                }
                let (code, message) = try ConnectEndStream.parse(envelope.payload)
                connectStatus = RPCClientStatus(code: code, message: message, httpStatus: httpStatus)
            }
        } catch {
            cancel(error.code, "bad response message: \(error.message)")
        }
    }

    private var isGRPCResponse: Bool {
        httpStatus == 200 && (contentType ?? "").hasPrefix(isConnect ? "application/connect" : "application/grpc")
    }

    /// nghttp2 closed the stream (END_STREAM both ways, or a reset either way).
    func closed(errorCode: UInt32) {
        connection = nil
        finish(localEnd ?? status(errorCode: errorCode))
    }

    private func status(errorCode: UInt32) -> RPCClientStatus {
        if let connectStatus {
            if connectStatus.isOK, decoder.hasPartialMessage {
                return RPCClientStatus(code: .internal, message: "the response ended inside a message", httpStatus: httpStatus)
            }
            return connectStatus
        }
        if let grpcStatus {
            let code = Int(grpcStatus).flatMap(StatusCode.init(rawValue:)) ?? .unknown
            let message = grpcMessage.map(GRPCMessageEncoding.decode) ?? ""
            if code == .ok, decoder.hasPartialMessage {
                return RPCClientStatus(code: .internal, message: "the response ended inside a message", httpStatus: httpStatus)
            }
            return RPCClientStatus(code: code, message: message, httpStatus: httpStatus)
        }
        if errorCode != NGHTTP2_NO_ERROR.rawValue {
            let name = String(cString: nghttp2_http2_strerror(errorCode))
            switch errorCode {
            case NGHTTP2_REFUSED_STREAM.rawValue:
                return RPCClientStatus(
                    code: .unavailable, message: "the server refused the stream (REFUSED_STREAM): retry", httpStatus: httpStatus)
            case NGHTTP2_CANCEL.rawValue:
                return RPCClientStatus(
                    code: .cancelled, message: "the server cancelled the stream (RST_STREAM CANCEL)", httpStatus: httpStatus)
            default:
                return RPCClientStatus(code: .internal, message: "the server reset the stream (\(name))", httpStatus: httpStatus)
            }
        }
        guard let httpStatus else {
            return RPCClientStatus(code: .internal, message: "the stream ended without response headers")
        }
        if httpStatus != 200 {
            let body = String(decoding: errorBody, as: UTF8.self).split(separator: "\n").first.map { ": \($0)" } ?? ""
            return RPCClientStatus(
                code: Self.code(forHTTPStatus: httpStatus),
                message: "the server answered HTTP \(httpStatus) instead of a gRPC response\(body)", httpStatus: httpStatus
            )
        }
        if !isGRPCResponse {
            return RPCClientStatus(
                code: .unknown, message: "the response's content-type '\(contentType ?? "")' is not \(isConnect ? "Connect" : "gRPC")",
                httpStatus: httpStatus
            )
        }
        let missing = isConnect ? "an end-stream message" : "a grpc-status trailer"
        return RPCClientStatus(code: .internal, message: "the server ended the stream without \(missing)", httpStatus: httpStatus)
    }

    /// grpc/grpc doc/http-grpc-status-mapping.md.
    static func code(forHTTPStatus status: Int) -> StatusCode {
        switch status {
        case 400: .internal
        case 401: .unauthenticated
        case 403: .permissionDenied
        case 404: .unimplemented
        case 429, 502, 503, 504: .unavailable
        default: .unknown
        }
    }

    // MARK: Ending

    func connectionLost(_ message: String) {
        finish(localEnd ?? RPCClientStatus(code: .unavailable, message: message, httpStatus: httpStatus))
    }

    /// Ends the call from this side: a stream on the wire is reset with CANCEL and finishes when
    /// nghttp2 closes it; one still waiting for a connection finishes at once.
    func cancel(_ code: StatusCode, _ message: String) {
        guard !finished, localEnd == nil else { return }
        localEnd = RPCClientStatus(code: code, message: message, httpStatus: httpStatus)
        if let connection {
            connection.reset(self)
        } else {
            pool?.remove(self)
            finish(localEnd!)
        }
    }

    /// Reports `status` once and releases the stream's resources.
    func finish(_ status: RPCClientStatus) {
        guard !finished else { return }
        finished = true
        connection = nil
        if let deadlineTimer { loop?.cancelTimer(deadlineTimer) }
        deadlineTimer = nil
        observer.callFinished(status)
    }
}
