import CHTTPParser
import Glibc
import SluiceWire

/// One HTTP/1.1 response on its way out: a fixed body (errors, refusals) or a handler's
/// `StreamOutbound`. Turns what the handler queued into bytes on the wire: with Content-Length
/// when the handler had finished by the time its head went out, otherwise chunked as it is written
/// (or, for an HTTP/1.0 client, delimited by closing the connection). Loop-confined.
final class HTTP1Response {
    enum Source {
        case fixed(status: Int, headers: [(String, String)], body: [UInt8])
        case handler(StreamOutbound, Task<Void, Never>)
        /// A Connect call: enveloped messages, then the end-stream message that carries its status, so the
        /// response ends cleanly whatever the status. No task when the call failed before its handler ran.
        case rpc(StreamOutbound, Task<Void, Never>?)
    }

    private enum Framing {
        case none
        case chunked
        case untilClose
    }

    let source: Source
    /// Added to whatever head goes out (CORS).
    private let extraHeaders: [(String, String)]
    private let isHead: Bool
    private let clientIsHTTP10: Bool
    private var headWritten = false
    private var headStatus = 0
    private var framing = Framing.none
    private(set) var complete = false
    /// The connection must close once this response is out: it said `connection: close`, its end
    /// is the connection's end, or it was cut off (the client then sees a truncated message).
    private(set) var closesConnection = false

    init(_ source: Source, method: String, versionMinor: Int, extraHeaders: [(String, String)] = []) {
        self.source = source
        self.extraHeaders = extraHeaders
        isHead = method == "HEAD"
        clientIsHTTP10 = versionMinor == 0
    }

    /// Appends the next bytes to send, if any are ready. `closing` says whether the connection
    /// ends after this response (announced with `connection: close` in the head).
    func produce(into out: inout [UInt8], scratch: UnsafeMutableRawBufferPointer, closing: Bool) {
        guard !complete else { return }
        switch source {
        case .fixed(let status, let headers, let body):
            writeHead(status: status, headers: headers, contentLength: body.count, closing: closing, into: &out)
            if !isHead && Self.allowsBody(status) { out += body }
            complete = true
        case .handler(let outbound, _), .rpc(let outbound, _):
            if !headWritten {
                guard outbound.responseShape(trailersOnlyAllowed: false) != nil else { return }
                startHandlerResponse(outbound, scratch: scratch, closing: closing, into: &out)
            } else {
                while true {
                    let drained = outbound.drain(into: scratch)
                    let before = out.count
                    appendBody(UnsafeRawBufferPointer(rebasing: scratch[0..<drained.byteCount]), into: &out)
                    if drained.endOfStream { return end(ok: endsCleanly(drained.status?.code), into: &out) }
                    // Bytes dropped (HEAD, or a status without a body) still have to be drained,
                    // or the loop would never be woken again.
                    if drained.byteCount == 0 || out.count > before { return }
                }
            }
        }
    }

    private func startHandlerResponse(
        _ outbound: StreamOutbound, scratch: UnsafeMutableRawBufferPointer, closing: Bool, into out: inout [UInt8]
    ) {
        let head = outbound.head ?? [(":status", "500")]
        let status = head.first { $0.0 == ":status" }.flatMap { Int($0.1) } ?? 500
        headStatus = status
        let drained = outbound.drain(into: scratch)
        let body = UnsafeRawBufferPointer(rebasing: scratch[0..<drained.byteCount])
        if drained.endOfStream && endsCleanly(drained.status?.code) {
            // Finished already (the usual short answer): one piece with its length.
            writeHead(status: status, headers: head, contentLength: body.count, closing: closing, into: &out)
            if !isHead && Self.allowsBody(status) { out.append(contentsOf: body) }
            complete = true
            return
        }
        if drained.endOfStream {
            // Reset by the handler or ended by the server before any of it went out: hang up.
            complete = true
            closesConnection = true
            return
        }
        if Self.allowsBody(status) { framing = clientIsHTTP10 ? .untilClose : .chunked }
        if framing == .untilClose { closesConnection = true }
        writeHead(status: status, headers: head, contentLength: nil, closing: closing, into: &out)
        appendBody(body, into: &out)
    }

    private func appendBody(_ bytes: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        guard !bytes.isEmpty, !isHead else { return }
        switch framing {
        case .none: return
        case .chunked:
            out += Array(String(bytes.count, radix: 16).utf8) + [13, 10]
            out.append(contentsOf: bytes)
            out += [13, 10]
        case .untilClose: out.append(contentsOf: bytes)
        }
    }

    /// OK, or the 500 page of a handler that failed (see `runHTTPHandler`). Anything else, such
    /// as a failure after a head of the handler's own, must show as a truncated response.
    private func endsCleanly(_ code: StatusCode?) -> Bool {
        if case .rpc = source { return true }
        return code == .ok || (code == .internal && headStatus == 500)
    }

    private func end(ok: Bool, into out: inout [UInt8]) {
        complete = true
        if ok && framing == .chunked && !isHead {
            out += Array("0\r\n\r\n".utf8)
        } else if !ok {
            closesConnection = true
        }
    }

    private func writeHead(status: Int, headers: [(String, String)], contentLength: Int?, closing: Bool, into out: inout [UInt8]) {
        headWritten = true
        if closing { closesConnection = true }
        var head = "HTTP/1.1 \(status) \(Self.reason(status))\r\ndate: \(Self.httpDate())\r\n"
        for (name, value) in headers + extraHeaders where !Self.managedHeaders.contains(name) && !name.hasPrefix(":") {
            // A CR or LF would let a header value start a header (or the body) of its own.
            let field = "\(name): \(value)\r\n"
            guard !field.utf8.dropLast(2).contains(where: { $0 == 13 || $0 == 10 }) else { continue }
            head += field
        }
        if Self.allowsBody(status) {
            if let contentLength {
                head += "content-length: \(contentLength)\r\n"
            } else if framing == .chunked {
                head += "transfer-encoding: chunked\r\n"
            }
        }
        if closing || closesConnection { head += "connection: close\r\n" }
        head += "\r\n"
        out += Array(head.utf8)
    }

    /// Headers the connection sets itself; a handler's own would contradict the framing.
    private static let managedHeaders: Set<String> = [
        "connection", "content-length", "transfer-encoding", "keep-alive", "date", "upgrade",
    ]

    /// 1xx, 204 and 304 responses have no body and no length (RFC 9110 §6.4.1, §8.6).
    private static func allowsBody(_ status: Int) -> Bool {
        !(100..<200).contains(status) && status != 204 && status != 304
    }

    private static func reason(_ status: Int) -> String {
        let text = String(cString: http_status_str(http_status(UInt32(clamping: status))))
        return text == "<unknown>" ? "" : text
    }

    /// The `date` header (RFC 9110 §6.6.1): an origin server with a clock sends it.
    private static func httpDate() -> String {
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        var buffer = [CChar](repeating: 0, count: 64)
        let count = strftime(&buffer, buffer.count, "%a, %d %b %Y %H:%M:%S GMT", &parts)
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The connection closed under the response: stop its handler.
    func connectionClosed() {
        guard let (outbound, task) = handlerParts else { return }
        outbound.close(RPCError(.cancelled, "the client's connection closed"), disconnect: .connectionLost)
        task?.cancel()
    }

    /// The server's drain timeout or the call's deadline passed: end the handler's response now.
    func abort(_ code: StatusCode, _ message: String) {
        guard let (outbound, task) = handlerParts else { return }
        if outbound.abort(code, message) { task?.cancel() }
    }

    private var handlerParts: (StreamOutbound, Task<Void, Never>?)? {
        switch source {
        case .fixed: nil
        case .handler(let outbound, let task): (outbound, task)
        case .rpc(let outbound, let task): (outbound, task)
        }
    }
}
