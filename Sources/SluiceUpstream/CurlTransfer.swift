import CCurl
import Glibc
import SluiceIO

/// One Messages API call: its easy handle, its response head, and the I/O, deadline and backpressure policy around
/// the `AnthropicStreamDecoder` that reads its body; or, for a buffered call (`UpstreamClient.post`), the whole
/// body of whatever status, handed over at the end.
///
/// Created on the caller's thread, then touched only on its multi handle's event loop (configure, callbacks, completion);
/// other threads use it only as an identity for cancellation. libcurl's callbacks find it through the
/// unretained pointer in CURLOPT_WRITEDATA / CURLOPT_HEADERDATA / CURLOPT_PRIVATE; `CurlMulti.active` holds
/// the strong reference for as long as the easy handle is in the multi handle.
final class CurlTransfer: @unchecked Sendable {
    let channel: UpstreamEventChannel
    /// Appended to the base URL.
    let path: String
    /// Keeps the whole body (any content type, any status) instead of decoding an event stream.
    let buffersResponse: Bool
    /// The request body until `configure` hands libcurl its own copy (CURLOPT_COPYPOSTFIELDS); then empty.
    private var body: [UInt8]
    private let bodyCount: Int
    private let extraHeaders: [(String, String)]

    // Event loop only.
    private(set) var easy: UnsafeMutableRawPointer?
    private var headerList: UnsafeMutablePointer<curl_slist>?
    private var errorBuffer: UnsafeMutablePointer<CChar>?
    var startedAt = ContinuousClock.now
    /// Last bytes or non-`ping` event: what the idle timeout measures.
    var lastProgress = ContinuousClock.now
    /// When the model's first output arrived (see `UpstreamConfiguration.firstByteTimeout`); nil before.
    private(set) var firstOutputAt: ContinuousClock.Instant?
    private var status: Int?
    private var headers: [(String, String)] = []
    private var headerBytes = 0
    private(set) var responseHead: UpstreamResponseHead?
    /// Reads the body of a 2xx response; replaced when its head arrives, to know its `request-id`.
    private var decoder = AnthropicStreamDecoder(requestID: nil)
    /// An error response's body, or a buffered call's whole body.
    private(set) var bufferedBody: [UInt8] = []
    private var maxErrorBodyBytes = 0
    private var maxBufferedBytes = 0
    /// When `message_stop` arrived: the call is complete even if libcurl has not yet seen the end of the stream.
    private(set) var messageStopAt: ContinuousClock.Instant?
    /// The loop timer that will look at this transfer's deadline, and when (managed by `CurlMulti`).
    var deadlineTimer: (id: TimerID, at: ContinuousClock.Instant)?
    /// Called when the deadline moved earlier (first output, `message_stop`), so the timer is re-armed.
    var deadlineMovedEarlier: (() -> Void)?
    /// A failure decided by Sluice (malformed stream, error event, slow consumer); takes precedence over the
    /// CURLE_WRITE_ERROR that aborting through the write callback produces.
    private var failure: UpstreamFailure?
    private(set) var abortedForSlowConsumer = false
    /// libcurl's upload buffer has been freed (see `releaseUploadBuffer`).
    private(set) var uploadBufferReleased = false

    /// Response header bytes kept at most; more are dropped (the status line and `request-id` come first).
    private static let maxHeaderBytes = 64 << 10
    /// libcurl's upload buffer per transfer: its minimum (16 KiB) instead of the 64 KiB default. Over HTTP/2 libcurl
    /// sends the request body through this buffer, allocated per transfer and held until the transfer ends; at
    /// thousands of streams in flight the default was the largest allocation of a stream (heaptrack), and a bigger
    /// body only takes more passes.
    static let uploadBufferBytes = 16 << 10
    /// libcurl's receive buffer per transfer (`CURLOPT_BUFFERSIZE`): its default, set so it is not lowered lightly.
    /// 4 KiB held 3 KiB less resident per stream in flight, but libcurl 7.88 then stalled a stream whose burst of
    /// events outgrew the buffer until the idle timeout (`eventsLargerThanTheReceiveBufferArriveWhole`).
    static let receiveBufferBytes = 16 << 10
    /// Headers Sluice sets itself; callers' headers with these names are ignored.
    /// An `anthropic-version` value: a date such as 2023-06-01, nothing that could end the header line.
    static func isVersion(_ value: String) -> Bool {
        !value.isEmpty && value.utf8.allSatisfy { (0x30...0x39).contains($0) || $0 == UInt8(ascii: "-") }
    }

    static let managedHeaders: Set<String> = [
        "x-api-key", "authorization", "anthropic-version", "content-type", "accept", "content-length", "host",
        "expect", "transfer-encoding", "connection",
    ]

    init(channel: UpstreamEventChannel, path: String, body: [UInt8], extraHeaders: [(String, String)], buffersResponse: Bool = false) {
        self.channel = channel
        self.path = path
        self.buffersResponse = buffersResponse
        self.body = body
        bodyCount = body.count
        self.extraHeaders = extraHeaders
    }

    // MARK: Setup and teardown

    func configure(
        url: String, httpVersion: Int, freshConnection: Bool, configuration: UpstreamConfiguration
    ) throws(UpstreamFailure) {
        maxErrorBodyBytes = configuration.maxErrorBodyBytes
        maxBufferedBytes = configuration.maxBufferedBytes
        guard let easy = curl_easy_init() else {
            throw UpstreamFailure(.connectionFailed, message: "curl_easy_init failed")
        }
        self.easy = easy
        let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE))
        buffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE))
        errorBuffer = buffer

        // A caller's `anthropic-version` (`POST /v1/messages` forwards the SDK's) replaces the default.
        let version = extraHeaders.last { $0.0.lowercased() == "anthropic-version" }?.1 ?? "2023-06-01"
        guard Self.isVersion(version) else {
            throw UpstreamFailure(.invalidResponse, message: "invalid anthropic-version '\(Self.printable(version))'", retryable: false)
        }
        let accept = buffersResponse ? "application/json" : "text/event-stream"
        var lines = ["anthropic-version: \(version)", "content-type: application/json", "accept: \(accept)"]
        if let key = configuration.apiKey { lines.append("x-api-key: \(key)") }
        // libcurl adds `Expect: 100-continue` to large HTTP/1.1 POSTs; an empty value suppresses it.
        lines.append("expect:")
        for (name, value) in extraHeaders {
            let lowered = name.lowercased()
            guard !Self.managedHeaders.contains(lowered) else { continue }
            guard Self.isToken(lowered), !value.utf8.contains(where: { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F })
            else {
                throw UpstreamFailure(
                    .invalidResponse, message: "invalid request header '\(Self.printable(name))'", retryable: false
                )
            }
            lines.append("\(lowered): \(value)")
        }
        for line in lines {
            guard let list = curl_slist_append(headerList, line) else {
                throw UpstreamFailure(.connectionFailed, message: "curl_slist_append failed")
            }
            headerList = list
        }

        let context = Unmanaged.passUnretained(self).toOpaque()
        let writeFunction: @convention(c) (UnsafeMutablePointer<CChar>?, Int, Int, UnsafeMutableRawPointer?) -> Int = {
            data, size, count, context in
            let transfer = Unmanaged<CurlTransfer>.fromOpaque(context!).takeUnretainedValue()
            return transfer.receiveBody(UnsafeRawBufferPointer(start: data, count: size * count))
        }
        let headerFunction: @convention(c) (UnsafeMutablePointer<CChar>?, Int, Int, UnsafeMutableRawPointer?) -> Int = {
            data, size, count, context in
            let transfer = Unmanaged<CurlTransfer>.fromOpaque(context!).takeUnretainedValue()
            return transfer.receiveHeader(UnsafeRawBufferPointer(start: data, count: size * count))
        }

        var results: [(String, CURLcode)] = [
            ("URL", sluice_curl_easy_setopt_string(easy, CURLOPT_URL, url)),
            ("PROTOCOLS_STR", sluice_curl_easy_setopt_string(easy, CURLOPT_PROTOCOLS_STR, "http,https")),
            ("HTTP_VERSION", sluice_curl_easy_setopt_long(easy, CURLOPT_HTTP_VERSION, httpVersion)),
            ("PIPEWAIT", sluice_curl_easy_setopt_long(easy, CURLOPT_PIPEWAIT, freshConnection ? 0 : 1)),
            ("NOSIGNAL", sluice_curl_easy_setopt_long(easy, CURLOPT_NOSIGNAL, 1)),
            ("TCP_KEEPALIVE", sluice_curl_easy_setopt_long(easy, CURLOPT_TCP_KEEPALIVE, 1)),
            ("SSL_VERIFYPEER", sluice_curl_easy_setopt_long(easy, CURLOPT_SSL_VERIFYPEER, 1)),
            ("SSL_VERIFYHOST", sluice_curl_easy_setopt_long(easy, CURLOPT_SSL_VERIFYHOST, 2)),
            (
                "CONNECTTIMEOUT_MS",
                sluice_curl_easy_setopt_long(
                    easy, CURLOPT_CONNECTTIMEOUT_MS, max(1, Self.milliseconds(configuration.connectTimeout))
                )
            ),
            ("POST", sluice_curl_easy_setopt_long(easy, CURLOPT_POST, 1)),
            ("UPLOAD_BUFFERSIZE", sluice_curl_easy_setopt_long(easy, CURLOPT_UPLOAD_BUFFERSIZE, Self.uploadBufferBytes)),
            ("BUFFERSIZE", sluice_curl_easy_setopt_long(easy, CURLOPT_BUFFERSIZE, Self.receiveBufferBytes)),
            (
                "POSTFIELDSIZE_LARGE",
                sluice_curl_easy_setopt_offset(
                    easy, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.count)
                )
            ),
            (
                "COPYPOSTFIELDS",
                body.withUnsafeBytes { bytes in
                    // COPYPOSTFIELDS copies `POSTFIELDSIZE` bytes; an empty body still needs a valid pointer.
                    var empty: UInt8 = 0
                    return sluice_curl_easy_setopt_ptr(
                        easy, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: bytes.baseAddress) ?? .init(&empty)
                    )
                }
            ),
            ("HTTPHEADER", sluice_curl_easy_setopt_slist(easy, CURLOPT_HTTPHEADER, headerList)),
            ("ERRORBUFFER", sluice_curl_easy_setopt_ptr(easy, CURLOPT_ERRORBUFFER, buffer)),
            ("WRITEFUNCTION", sluice_curl_easy_setopt_write_function(easy, writeFunction)),
            ("WRITEDATA", sluice_curl_easy_setopt_ptr(easy, CURLOPT_WRITEDATA, context)),
            ("HEADERFUNCTION", sluice_curl_easy_setopt_header_function(easy, headerFunction)),
            ("HEADERDATA", sluice_curl_easy_setopt_ptr(easy, CURLOPT_HEADERDATA, context)),
            ("PRIVATE", sluice_curl_easy_setopt_ptr(easy, CURLOPT_PRIVATE, context)),
        ]
        if freshConnection {
            results.append(("FRESH_CONNECT", sluice_curl_easy_setopt_long(easy, CURLOPT_FRESH_CONNECT, 1)))
            results.append(("FORBID_REUSE", sluice_curl_easy_setopt_long(easy, CURLOPT_FORBID_REUSE, 1)))
        }
        if let path = configuration.caBundlePath {
            results.append(("CAINFO", sluice_curl_easy_setopt_string(easy, CURLOPT_CAINFO, path)))
        }
        body = []
        if let (option, code) = results.first(where: { $0.1 != CURLE_OK }) {
            throw UpstreamFailure(
                .connectionFailed,
                message: "libcurl rejected CURLOPT_\(option): \(String(cString: curl_easy_strerror(code)))",
                retryable: false
            )
        }
    }

    /// Before removing the last running transfer while its response is unfinished: have libcurl close the
    /// connection rather than keep it. libcurl 7.88 submits the stream's RST_STREAM on removal but, over TLS,
    /// writes it only with the connection's next activity; on a connection left idle the server would go on
    /// generating (and billing) the abandoned response. (libcurl reads CURLOPT_FORBID_REUSE when the transfer is
    /// done.) With other transfers running, the connection is kept and their traffic flushes the RST_STREAM:
    /// setting this on a shared connection would stop that flush until the connection closes.
    func closeConnection() {
        if let easy { _ = sluice_curl_easy_setopt_long(easy, CURLOPT_FORBID_REUSE, 1) }
    }

    /// Frees the easy handle and what it points at; the handle must already be out of the multi handle.
    func release() {
        if let easy { curl_easy_cleanup(easy) }
        easy = nil
        if let headerList { curl_slist_free_all(headerList) }
        headerList = nil
        errorBuffer?.deallocate()
        errorBuffer = nil
    }

    deinit {
        release()
    }

    // MARK: Callbacks (event loop, inside curl_multi_socket_action)

    /// The first-output phase is over: from now on the idle timeout applies.
    private func noteOutput() {
        guard firstOutputAt == nil else { return }
        let now = ContinuousClock.now
        firstOutputAt = now
        lastProgress = now
        deadlineMovedEarlier?()
    }

    enum DeadlineKind {
        /// `message_stop` arrived `endOfStreamGrace` ago: retire the transfer.
        case retire
        case firstByte
        case idle
    }

    /// When this transfer next needs looking at, and why.
    func nextDeadline(
        configuration: UpstreamConfiguration, endOfStreamGrace: Duration
    ) -> (at: ContinuousClock.Instant, kind: DeadlineKind) {
        if let messageStopAt { return (messageStopAt + endOfStreamGrace, .retire) }
        if firstOutputAt == nil { return (startedAt + configuration.firstByteTimeout, .firstByte) }
        return (lastProgress + configuration.idleTimeout, .idle)
    }

    /// One header line, CRLF included. Returns the bytes taken; anything else aborts the transfer.
    private func receiveHeader(_ bytes: UnsafeRawBufferPointer) -> Int {
        lastProgress = ContinuousClock.now
        var end = bytes.count
        while end > 0, bytes[end - 1] == UInt8(ascii: "\r") || bytes[end - 1] == UInt8(ascii: "\n") { end -= 1 }
        let line = Substring(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[..<end]), as: UTF8.self))

        if line.hasPrefix("HTTP/") {
            // A new status line (after a 1xx, or the first one) starts a new header block.
            let fields = line.split(separator: " ", maxSplits: 2)
            status = fields.count >= 2 ? Int(fields[1]) : nil
            headers = []
            headerBytes = 0
            return bytes.count
        }
        if line.isEmpty {
            guard let status, !(100..<200).contains(status) else { return bytes.count }
            let head = UpstreamResponseHead(status: status, headers: headers)
            responseHead = head
            channel.setResponseHead(head)
            // An error response or a buffered call has no model output to wait for: its body is bounded by the
            // idle timeout.
            if buffersResponse || !(200..<300).contains(status) { noteOutput() }
            if buffersResponse { return bytes.count }
            if (200..<300).contains(status), let type = headers.first(where: { $0.0 == "content-type" })?.1,
                !type.lowercased().contains("text/event-stream")
            {
                return fail(
                    UpstreamFailure(
                        .invalidResponse,
                        message: "Anthropic API answered HTTP \(status) with content-type '\(type)', not an event stream",
                        requestID: head.requestID
                    ))
            }
            if (200..<300).contains(status) { decoder = AnthropicStreamDecoder(requestID: head.requestID) }
            return bytes.count
        }
        headerBytes += bytes.count
        guard headerBytes <= Self.maxHeaderBytes, let colon = line.firstIndex(of: ":") else { return bytes.count }
        let name = line[..<colon].lowercased()
        var value = line[line.index(after: colon)...]
        while let first = value.first, first == " " || first == "\t" { value.removeFirst() }
        while let last = value.last, last == " " || last == "\t" { value.removeLast() }
        headers.append((name, String(value)))
        return bytes.count
    }

    /// Up to `receiveBufferBytes` of body. Returns the bytes taken; anything else aborts the transfer.
    private func receiveBody(_ bytes: UnsafeRawBufferPointer) -> Int {
        guard let head = responseHead else {
            return fail(UpstreamFailure(.invalidResponse, message: "Anthropic API sent a body without a status"))
        }
        if buffersResponse {
            guard bufferedBody.count + bytes.count <= maxBufferedBytes else {
                return fail(
                    UpstreamFailure(
                        .invalidResponse, message: "Anthropic API response is larger than \(maxBufferedBytes) bytes",
                        retryable: false, requestID: head.requestID))
            }
            bufferedBody.append(contentsOf: bytes)
            lastProgress = ContinuousClock.now
            return bytes.count
        }
        guard (200..<300).contains(head.status) else {
            let room = max(0, maxErrorBodyBytes - bufferedBody.count)
            bufferedBody.append(contentsOf: bytes.prefix(room))
            lastProgress = ContinuousClock.now
            return bytes.count
        }
        releaseUploadBuffer()
        // After message_stop the call is complete; whatever follows (normally nothing) is ignored.
        if decoder.end != nil { return bytes.count }
        // The consumer is gone: take nothing more; its cancellation, queued behind this callback, removes the handle.
        if channel.isClosed { return bytes.count }

        let output = decoder.feed(bytes)
        if output.firstOutput { noteOutput() }
        for decoded in output.events {
            switch channel.yield(decoded.event, bytes: decoded.size) {
            case .accepted:
                break
            case .overflow:
                abortedForSlowConsumer = true
                return fail(
                    UpstreamFailure(
                        .streamEndedEarly,
                        message: "consumer too slow: more than \(channel.maxBufferedBytes) bytes of Anthropic API events "
                            + "were waiting to be read, so the upstream call was aborted",
                        retryable: true,
                        requestID: head.requestID
                    ))
            case .closed:
                return 0
            }
        }
        switch output.end {
        case .failed(let failure)?:
            return fail(failure)
        case .complete?:
            messageStopAt = .now
            deadlineMovedEarlier?()
            channel.finish(.success(()))
        case nil:
            break
        }
        if output.progressed { lastProgress = ContinuousClock.now }
        return bytes.count
    }

    /// Frees libcurl's upload buffer once the whole request body has been handed on. libcurl 7.88 keeps it
    /// (`CURLOPT_UPLOAD_BUFFERSIZE`, 16 KiB at least) until the transfer ends, though it reads it no more once the
    /// body is sent (transfer.c: the send direction is done); setting the option again frees it (setopt.c), and
    /// would only allocate a new one if more were to be sent. A streaming answer lasts seconds to minutes: this is
    /// 16 KiB of heap per stream in flight (10 KiB less resident at 1,000 streams, same-run A/B).
    private func releaseUploadBuffer() {
        guard !uploadBufferReleased, let easy else { return }
        var uploaded: curl_off_t = 0
        guard sluice_curl_easy_getinfo_offset(easy, CURLINFO_SIZE_UPLOAD_T, &uploaded) == CURLE_OK, uploaded == bodyCount
        else { return }
        _ = sluice_curl_easy_setopt_long(easy, CURLOPT_UPLOAD_BUFFERSIZE, Self.uploadBufferBytes)
        uploadBufferReleased = true
    }

    /// Records `failure`, ends the consumer's stream with it at once, and returns 0 so libcurl aborts the transfer.
    private func fail(_ failure: UpstreamFailure) -> Int {
        if self.failure == nil { self.failure = failure }
        channel.finish(.failure(failure))
        return 0
    }

    // MARK: Completion

    /// How the call ended, given libcurl's result for the transfer.
    func outcome(code: CURLcode) -> Result<Void, UpstreamFailure> {
        if let failure { return .failure(failure) }
        // A buffered call's status, whatever it is, is its caller's to read.
        if buffersResponse, code == CURLE_OK, responseHead != nil { return .success(()) }
        if decoder.end == .complete { return .success(()) }
        if let head = responseHead, !(200..<300).contains(head.status) {
            return .failure(.http(status: head.status, body: bufferedBody, headers: head.headers))
        }
        if code == CURLE_OK, case .failed(let truncated) = decoder.finish() { return .failure(truncated) }
        return .failure(classify(code, requestID: responseHead?.requestID))
    }

    private func classify(_ code: CURLcode, requestID: String?) -> UpstreamFailure {
        var detail = String(cString: curl_easy_strerror(code))
        if let errorBuffer, errorBuffer.pointee != 0 {
            let text = String(cString: errorBuffer)
            if !text.isEmpty, text != detail { detail += ": \(text)" }
        }
        let started = responseHead != nil
        switch code {
        case CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY, CURLE_COULDNT_CONNECT:
            return UpstreamFailure(.connectionFailed, message: "cannot connect to the Anthropic API (\(detail))")
        case CURLE_OPERATION_TIMEDOUT where !started:
            return UpstreamFailure(.connectionFailed, message: "timed out connecting to the Anthropic API (\(detail))")
        case CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CACERT_BADFILE, CURLE_SSL_CERTPROBLEM, CURLE_SSL_ISSUER_ERROR,
            CURLE_SSL_PINNEDPUBKEYNOTMATCH, CURLE_SSL_CRL_BADFILE:
            return UpstreamFailure(
                .connectionFailed, message: "TLS verification of the Anthropic API failed (\(detail))", retryable: false
            )
        case CURLE_SSL_CONNECT_ERROR:
            return UpstreamFailure(.connectionFailed, message: "TLS handshake with the Anthropic API failed (\(detail))")
        case CURLE_WEIRD_SERVER_REPLY, CURLE_BAD_CONTENT_ENCODING, CURLE_UNSUPPORTED_PROTOCOL:
            return UpstreamFailure(
                .invalidResponse, message: "invalid response from the Anthropic API (\(detail))", requestID: requestID
            )
        case CURLE_HTTP2, CURLE_HTTP2_STREAM, CURLE_RECV_ERROR, CURLE_SEND_ERROR, CURLE_PARTIAL_FILE,
            CURLE_GOT_NOTHING, CURLE_OPERATION_TIMEDOUT:
            return UpstreamFailure(
                .connectionReset, message: "connection to the Anthropic API was reset (\(detail))", requestID: requestID
            )
        default:
            return started
                ? UpstreamFailure(
                    .connectionReset, message: "Anthropic API transfer failed (\(detail))", requestID: requestID
                )
                : UpstreamFailure(.connectionFailed, message: "Anthropic API request failed (\(detail))")
        }
    }

    // MARK: Helpers

    static func milliseconds(_ duration: Duration) -> Int {
        let (seconds, attoseconds) = duration.components
        return Int(clamping: seconds) &* 1000 + Int(attoseconds / 1_000_000_000_000_000)
    }

    /// An HTTP field name (RFC 9110 token).
    private static func isToken(_ name: String) -> Bool {
        !name.isEmpty
            && name.utf8.allSatisfy { byte in
                switch byte {
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
                case UInt8(ascii: "A")...UInt8(ascii: "Z"): true
                default: "!#$%&'*+-.^_`|~".utf8.contains(byte)
                }
            }
    }

    private static func printable(_ text: String) -> String {
        String(text.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7F }.prefix(64).map(Character.init))
    }
}
