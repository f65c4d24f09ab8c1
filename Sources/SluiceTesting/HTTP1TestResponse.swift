import CCurl
import Dispatch
import Foundation
import SluiceWire

/// An HTTP/1.1 response read whole: status, headers (names lower-cased)
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

    /// Sends the request with libcurl (HTTP/1.1, which also undoes chunked framing) on a Dispatch thread, not the
    /// test's task; a server that does not finish the response fails it after `timeout`.
    static func fetch(
        port: Int, method: String, path: String, headers: [(String, String)], body: [UInt8], timeout: Duration = .seconds(30)
    ) async throws -> HTTP1TestResponse {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<HTTP1TestResponse, any Error>) in
            DispatchQueue.global().async {
                continuation.resume(
                    with: Result {
                        try perform(url: "http://127.0.0.1:\(port)\(path)", method: method, headers: headers, body: body, timeout: timeout)
                    })
            }
        }
    }

    /// What libcurl's callbacks collect.
    private final class Received {
        var headers: [(String, String)] = []
        var body: [UInt8] = []
    }

    private static func perform(
        url: String, method: String, headers: [(String, String)], body: [UInt8], timeout: Duration
    ) throws -> HTTP1TestResponse {
        guard let handle = curl_easy_init() else { throw HTTP1TestError("curl_easy_init failed") }
        defer { curl_easy_cleanup(handle) }
        var list: UnsafeMutablePointer<curl_slist>?
        for (name, value) in headers { list = curl_slist_append(list, "\(name): \(value)") }
        defer { curl_slist_free_all(list) }
        let received = Received()
        let context = Unmanaged.passUnretained(received).toOpaque()
        _ = sluice_curl_easy_setopt_string(handle, CURLOPT_URL, url)
        _ = sluice_curl_easy_setopt_long(handle, CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_1_1))
        _ = sluice_curl_easy_setopt_string(handle, CURLOPT_CUSTOMREQUEST, method)
        _ = sluice_curl_easy_setopt_slist(handle, CURLOPT_HTTPHEADER, list)
        _ = sluice_curl_easy_setopt_long(handle, CURLOPT_TIMEOUT_MS, Int(timeout.components.seconds * 1000))
        if !body.isEmpty || method == "POST" {
            // The size first: COPYPOSTFIELDS then copies that many bytes (the body may hold NULs).
            _ = sluice_curl_easy_setopt_offset(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.count))
            _ = (body.isEmpty ? [0] : body).withUnsafeBytes {
                sluice_curl_easy_setopt_ptr(handle, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: $0.baseAddress))
            }
        }
        _ = sluice_curl_easy_setopt_ptr(handle, CURLOPT_HEADERDATA, context)
        _ = sluice_curl_easy_setopt_header_function(handle) { bytes, size, count, context in
            let received = Unmanaged<Received>.fromOpaque(context!).takeUnretainedValue()
            let line = String(decoding: UnsafeRawBufferPointer(start: bytes, count: size * count), as: UTF8.self)
            // A new status line (after a 100 Continue) starts the headers afresh.
            if line.hasPrefix("HTTP/") { received.headers = [] }
            if let colon = line.firstIndex(of: ":") {
                let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespacesAndNewlines)
                received.headers.append((line[..<colon].lowercased(), value))
            }
            return size * count
        }
        _ = sluice_curl_easy_setopt_ptr(handle, CURLOPT_WRITEDATA, context)
        _ = sluice_curl_easy_setopt_write_function(handle) { bytes, size, count, context in
            let received = Unmanaged<Received>.fromOpaque(context!).takeUnretainedValue()
            received.body += UnsafeRawBufferPointer(start: bytes, count: size * count)
            return size * count
        }
        let code = curl_easy_perform(handle)
        guard code == CURLE_OK else { throw HTTP1TestError("\(method) \(url): \(String(cString: curl_easy_strerror(code)))") }
        var status = 0
        _ = sluice_curl_easy_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return HTTP1TestResponse(status: status, headers: received.headers, body: received.body)
    }
}

public struct HTTP1TestError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
