import CHTTPParser

/// An HTTP/1.x request as the parser hands it over: the request line, headers with lower-case
/// names (as HTTP/2 requires, so handlers see the same), and the whole body.
struct HTTP1Request {
    var method = ""
    var target = ""
    var versionMinor = 1
    var headers: [(name: String, value: String)] = []
    var body: [UInt8] = []
    /// What http_parser says of `Connection` and the version: false means close after the response.
    var keepAlive = true

    func header(_ name: String) -> String? {
        headers.first { $0.name == name }?.value
    }
}

/// Incremental HTTP/1.x request parsing on Debian's http_parser, with Sluice's limits. Parsing
/// stops after each request's head and after each complete request, so a connection answers
/// one request at a time and pipelined bytes wait their turn. Loop-confined, like its connection.
final class HTTP1RequestParser {
    enum Outcome {
        /// Every byte given was consumed; the request is not complete yet.
        case needMore
        /// The head is complete (its body, if any, follows): time for `Expect` and early limits.
        case head(HTTP1Request, contentLength: UInt64?)
        case request(HTTP1Request)
        case failed(Failure)
    }

    enum Failure: Equatable {
        case malformed(String)
        /// Request line and headers over the limit (431).
        case headersTooLarge
        /// Body over the limit (413).
        case bodyTooLarge
    }

    private let parser: UnsafeMutablePointer<http_parser>
    private let maxHeaderBytes: Int
    private let maxBodyBytes: Int

    private var request = HTTP1Request()
    private var headerBytes = 0
    private var fieldName: [UInt8] = []
    private var fieldValue: [UInt8] = []
    private var target: [UInt8] = []
    private var inValue = false
    private var failure: Failure?
    private var stoppedAt: Stop?

    private enum Stop { case head, request }

    /// - Parameters:
    ///   - maxHeaderBytes: budget for the request line and headers, counted as HTTP/2 counts a
    ///     header list (RFC 7541 §4.1: name + value + 32 per field, the method and target included).
    ///   - maxBodyBytes: largest request body.
    init(maxHeaderBytes: Int, maxBodyBytes: Int) {
        self.maxHeaderBytes = maxHeaderBytes
        self.maxBodyBytes = maxBodyBytes
        parser = .allocate(capacity: 1)
        http_parser_init(parser, HTTP_REQUEST)
        parser.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit { parser.deallocate() }

    /// Parses `bytes` until a request's head or end, or until they run out.
    func parse(_ bytes: UnsafeRawBufferPointer) -> (consumed: Int, outcome: Outcome) {
        guard failure == nil else { return (0, .failed(failure!)) }
        stoppedAt = nil
        let consumed = withUnsafePointer(to: Self.settings) { settings in
            http_parser_execute(parser, settings, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
        }
        let code = http_errno(parser.pointee.http_errno)
        if code == HPE_PAUSED {
            http_parser_pause(parser, 0)
            switch stoppedAt {
            case .head?: return (consumed, .head(request, contentLength: declaredContentLength))
            case .request?:
                let complete = request
                request = HTTP1Request()
                return (consumed, .request(complete))
            case nil: break
            }
        }
        if code != HPE_OK {
            let reason =
                failure
                ?? (code == HPE_HEADER_OVERFLOW
                    ? .headersTooLarge
                    : .malformed(String(cString: http_errno_description(code))))
            failure = reason
            return (consumed, .failed(reason))
        }
        return (consumed, .needMore)
    }

    /// The request target of the head parsed last (set once its head is complete): a route's own answer to a body
    /// over the limit needs its path.
    var headTarget: String { request.target }

    private var declaredContentLength: UInt64? {
        // http_parser keeps ULLONG_MAX when there is no Content-Length (chunked or no body).
        let length = parser.pointee.content_length
        return length == UInt64.max ? nil : length
    }

    // MARK: Callbacks

    private static func owner(_ parser: UnsafeMutablePointer<http_parser>?) -> HTTP1RequestParser {
        Unmanaged<HTTP1RequestParser>.fromOpaque(parser!.pointee.data).takeUnretainedValue()
    }

    private static func bytes(_ at: UnsafePointer<CChar>?, _ length: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: at, count: length)
    }

    /// Counts header bytes; false (and a failure) once over the budget.
    private func account(_ count: Int) -> Bool {
        headerBytes += count
        guard headerBytes <= maxHeaderBytes else {
            failure = .headersTooLarge
            return false
        }
        return true
    }

    private func commitField() {
        guard inValue else { return }
        let name = String(decoding: fieldName, as: UTF8.self).lowercased()
        request.headers.append((name, String(decoding: fieldValue, as: UTF8.self)))
        fieldName.removeAll(keepingCapacity: true)
        fieldValue.removeAll(keepingCapacity: true)
        inValue = false
    }

    private static let settings: http_parser_settings = {
        var settings = http_parser_settings()
        http_parser_settings_init(&settings)
        settings.on_message_begin = { parser in
            let owner = HTTP1RequestParser.owner(parser)
            owner.request = HTTP1Request()
            owner.headerBytes = 0
            owner.target.removeAll(keepingCapacity: true)
            owner.fieldName.removeAll(keepingCapacity: true)
            owner.fieldValue.removeAll(keepingCapacity: true)
            owner.inValue = false
            // The method and the target count like HTTP/2's :method and :path.
            return owner.account(2 * 32) ? 0 : 1
        }
        settings.on_url = { parser, at, length in
            let owner = HTTP1RequestParser.owner(parser)
            guard owner.account(length) else { return 1 }
            owner.target.append(contentsOf: HTTP1RequestParser.bytes(at, length))
            return 0
        }
        settings.on_header_field = { parser, at, length in
            let owner = HTTP1RequestParser.owner(parser)
            owner.commitField()
            guard owner.account(length + (owner.fieldName.isEmpty ? 32 : 0)) else { return 1 }
            owner.fieldName.append(contentsOf: HTTP1RequestParser.bytes(at, length))
            return 0
        }
        settings.on_header_value = { parser, at, length in
            let owner = HTTP1RequestParser.owner(parser)
            guard owner.account(length) else { return 1 }
            owner.inValue = true
            owner.fieldValue.append(contentsOf: HTTP1RequestParser.bytes(at, length))
            return 0
        }
        settings.on_headers_complete = { parser in
            let owner = HTTP1RequestParser.owner(parser)
            owner.commitField()
            guard let parser else { return -1 }
            owner.request.method = String(cString: http_method_str(http_method(parser.pointee.method)))
            owner.request.target = String(decoding: owner.target, as: UTF8.self)
            owner.request.versionMinor = Int(parser.pointee.http_minor)
            if parser.pointee.http_major != 1 {
                owner.failure = .malformed("HTTP version \(parser.pointee.http_major).\(parser.pointee.http_minor)")
                return -1
            }
            if let length = owner.declaredContentLength, length > UInt64(owner.maxBodyBytes) {
                owner.failure = .bodyTooLarge
                return -1
            }
            owner.stoppedAt = .head
            http_parser_pause(parser, 1)
            return 0
        }
        settings.on_body = { parser, at, length in
            let owner = HTTP1RequestParser.owner(parser)
            guard owner.request.body.count + length <= owner.maxBodyBytes else {
                owner.failure = .bodyTooLarge
                return 1
            }
            owner.request.body.append(contentsOf: HTTP1RequestParser.bytes(at, length))
            return 0
        }
        settings.on_message_complete = { parser in
            let owner = HTTP1RequestParser.owner(parser)
            owner.request.keepAlive = http_should_keep_alive(parser) != 0
            owner.stoppedAt = .request
            http_parser_pause(parser, 1)
            return 0
        }
        return settings
    }()
}
