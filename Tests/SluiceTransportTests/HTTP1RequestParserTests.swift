import Testing

@testable import SluiceTransport

@Suite struct HTTP1RequestParserTests {
    /// What one `parse` call reported, reduced to something comparable.
    enum Step: Equatable {
        case needMore
        case head(target: String, contentLength: UInt64?)
        case request(method: String, target: String, body: String)
        case failed(HTTP1RequestParser.Failure)
    }

    /// Feeds `input` in pieces of `chunk` bytes, calling `parse` again on what a pause left over,
    /// as the connection does. Returns every step but `needMore`, and the requests.
    private func parse(
        _ input: String, chunk: Int = .max, maxHeaderBytes: Int = 16 * 1024, maxBodyBytes: Int = 1024
    ) -> (steps: [Step], requests: [HTTP1Request]) {
        let parser = HTTP1RequestParser(maxHeaderBytes: maxHeaderBytes, maxBodyBytes: maxBodyBytes)
        let bytes = Array(input.utf8)
        var steps: [Step] = []
        var requests: [HTTP1Request] = []
        var start = 0
        while start < bytes.count {
            var piece = Array(bytes[start..<min(bytes.count, start + chunk)])
            start += piece.count
            while !piece.isEmpty {
                let (consumed, outcome) = piece.withUnsafeBytes { parser.parse($0) }
                piece.removeFirst(consumed)
                switch outcome {
                case .needMore: #expect(consumed > 0 || piece.isEmpty)
                case .head(let request, let length): steps.append(.head(target: request.target, contentLength: length))
                case .request(let request):
                    steps.append(
                        .request(method: request.method, target: request.target, body: String(decoding: request.body, as: UTF8.self)))
                    requests.append(request)
                case .failed(let failure):
                    steps.append(.failed(failure))
                    return (steps, requests)
                }
                if case .needMore = outcome { break }
            }
        }
        return (steps, requests)
    }

    @Test(arguments: [1, 7, Int.max])
    func requestInAnyPiecesHasLowerCaseHeadersAndItsBody(chunk: Int) {
        let (steps, requests) = parse(
            "POST /v1/x?a=1 HTTP/1.1\r\nHost: h\r\nX-Trace-ID: Abc\r\nContent-Length: 5\r\n\r\nhello", chunk: chunk)
        #expect(steps == [.head(target: "/v1/x?a=1", contentLength: 5), .request(method: "POST", target: "/v1/x?a=1", body: "hello")])
        let request = try! #require(requests.first)
        #expect(request.headers.map(\.name) == ["host", "x-trace-id", "content-length"])
        #expect(request.header("x-trace-id") == "Abc")
        #expect(request.keepAlive && request.versionMinor == 1)
    }

    @Test func pipelinedRequestsComeOneAtATimeInOrder() {
        let (steps, _) = parse("GET /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(
            steps.compactMap { if case .request(let method, let target, _) = $0 { "\(method) \(target)" } else { nil } } == [
                "GET /a", "HEAD /b", "GET /c",
            ])
    }

    @Test func chunkedBodyIsReassembled() {
        let (steps, _) = parse(
            "POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n", chunk: 4)
        #expect(steps.last == .request(method: "POST", target: "/p", body: "abcde"))
        #expect(steps.first == .head(target: "/p", contentLength: nil))
    }

    @Test func connectionCloseAndHTTP10EndKeepAlive() {
        let (_, closing) = parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        #expect(closing.first?.keepAlive == false)
        let (_, old) = parse("GET / HTTP/1.0\r\n\r\n")
        #expect(old.first?.keepAlive == false && old.first?.versionMinor == 0)
        let (_, oldKeepAlive) = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        #expect(oldKeepAlive.first?.keepAlive == true)
    }

    @Test func headersOverTheBudgetFail() {
        let big = String(repeating: "a", count: 2000)
        #expect(parse("GET / HTTP/1.1\r\nX-Big: \(big)\r\n\r\n", chunk: 100, maxHeaderBytes: 1024).steps == [.failed(.headersTooLarge)])
        #expect(parse("GET /\(big) HTTP/1.1\r\n\r\n", maxHeaderBytes: 1024).steps == [.failed(.headersTooLarge)])
        #expect(parse("GET / HTTP/1.1\r\nX-Big: \(big)\r\n\r\n", maxHeaderBytes: 4096).steps.count == 2)
    }

    @Test func bodiesOverTheLimitFailDeclaredOrChunked() {
        #expect(parse("POST / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n").steps == [.failed(.bodyTooLarge)])
        let chunked =
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n\(String(repeating: "x", count: 1024))\r\n1\r\nx\r\n0\r\n\r\n"
        #expect(parse(chunked, chunk: 256).steps.last == .failed(.bodyTooLarge))
    }

    @Test(arguments: [
        "\u{16}\u{03}\u{01}\u{02}\u{00}", "HELLO THERE\r\n\r\n", "GET / HTTP/1.1\r\nbad header\r\n\r\n",
        "GET / HTTP/3.0\r\n\r\n", "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ])
    func malformedRequestsFail(input: String) {
        guard case .failed(.malformed)? = parse(input).steps.last else {
            Issue.record("expected a malformed-request failure for \(input.debugDescription), got \(parse(input).steps)")
            return
        }
    }

    @Test func targetsSplitIntoPathAndQuery() {
        #expect(HTTP1Connection.splitTarget("/metrics")! == ("/metrics", nil))
        #expect(HTTP1Connection.splitTarget("/v1/streams?after_seq=3&x")! == ("/v1/streams", "after_seq=3&x"))
        #expect(HTTP1Connection.splitTarget("http://example.com:8080/healthz?x=1")! == ("/healthz", "x=1"))
        #expect(HTTP1Connection.splitTarget("http://example.com")! == ("/", nil))
        #expect(HTTP1Connection.splitTarget("*") == nil)
        #expect(HTTP1Connection.splitTarget("example.com:443") == nil)
    }
}
