import Dispatch
import Glibc
import SluiceWire

/// An HTTP/1.1 response read whole from a `connection: close` request: status, headers (names lower-cased)
/// and the body with any chunked framing removed.
public struct HTTP1TestResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]

    public var text: String { String(decoding: body, as: UTF8.self) }
    public var json: JSONValue? { try? JSONValue(parsing: body) }

    public func header(_ name: String) -> String? {
        headers.first { $0.0 == name.lowercased() }?.1
    }

    /// The body parsed as Server-Sent Events.
    public func serverSentEvents() throws -> [SSEEvent] {
        var parser = SSEParser()
        return try parser.feed(body)
    }

    /// Sends the request and reads until the server closes. Blocking socket I/O runs on a Dispatch thread,
    /// not the test's task; a server that neither answers nor closes fails it after `timeout`.
    static func fetch(
        port: Int, method: String, path: String, headers: [(String, String)], body: [UInt8], timeout: Duration = .seconds(30)
    ) async throws -> HTTP1TestResponse {
        var request = "\(method) \(path) HTTP/1.1\r\nhost: 127.0.0.1:\(port)\r\nconnection: close\r\n"
        for (name, value) in headers { request += "\(name): \(value)\r\n" }
        if !body.isEmpty || method == "POST" { request += "content-length: \(body.count)\r\n" }
        let bytes = Array((request + "\r\n").utf8) + body
        let raw = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[UInt8], any Error>) in
            DispatchQueue.global().async {
                continuation.resume(with: Result { try exchange(port: port, request: bytes, timeout: timeout) })
            }
        }
        return try parse(raw)
    }

    private static func exchange(port: Int, request: [UInt8], timeout: Duration) throws -> [UInt8] {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HTTP1TestError("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var receiveTimeout = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &receiveTimeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw HTTP1TestError("connect to port \(port): \(String(cString: strerror(errno)))") }
        var sent = 0
        while sent < request.count {
            let written = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { throw HTTP1TestError("send: \(String(cString: strerror(errno)))") }
            sent += written
        }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count == 0 { return response }
            if count < 0 {
                if errno == EINTR { continue }
                throw HTTP1TestError("no end of response within \(timeout) (\(String(cString: strerror(errno))))")
            }
            response += buffer[..<count]
        }
    }

    private static func parse(_ raw: [UInt8]) throws -> HTTP1TestResponse {
        let separator = Array("\r\n\r\n".utf8)
        guard let end = raw.firstRange(of: separator) else { throw HTTP1TestError("no complete response head in \(raw.count) bytes") }
        let lines = String(decoding: raw[..<end.lowerBound], as: UTF8.self).split(separator: "\r\n")
        let statusParts = lines.first?.split(separator: " ") ?? []
        guard statusParts.count >= 2, statusParts[0].hasPrefix("HTTP/1."), let status = Int(statusParts[1]) else {
            throw HTTP1TestError("bad status line '\(lines.first ?? "")'")
        }
        let headers = lines.dropFirst().compactMap { line -> (String, String)? in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (line[..<colon].lowercased(), String(line[line.index(after: colon)...].drop { $0 == " " }))
        }
        var body = Array(raw[end.upperBound...])
        if headers.contains(where: { $0.0 == "transfer-encoding" && $0.1.lowercased().contains("chunked") }) {
            body = try dechunk(body)
        }
        return HTTP1TestResponse(status: status, headers: headers, body: body)
    }

    private static func dechunk(_ bytes: [UInt8]) throws -> [UInt8] {
        var out: [UInt8] = []
        var index = 0
        let crlf = Array("\r\n".utf8)
        while true {
            guard let lineEnd = bytes[index...].firstRange(of: crlf) else { throw HTTP1TestError("unterminated chunk size") }
            let sizeText = String(decoding: bytes[index..<lineEnd.lowerBound], as: UTF8.self).split(separator: ";").first ?? ""
            guard let size = Int(sizeText.trimmingPrefix(while: \.isWhitespace), radix: 16) else {
                throw HTTP1TestError("bad chunk size '\(sizeText)'")
            }
            index = lineEnd.upperBound
            if size == 0 { return out }
            guard index + size + 2 <= bytes.count else { throw HTTP1TestError("chunk of \(size) bytes cut short") }
            out += bytes[index..<index + size]
            index += size + 2
        }
    }
}

public struct HTTP1TestError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
