import SluiceWire
import Testing

@testable import SluiceTransport

@Suite struct ConnectUnaryTests {
    private func decode(_ headers: [String: String], _ body: [UInt8], limit: Int = 1024) -> Result<ConnectUnary.Call, RPCError> {
        ConnectUnary.decodeRequest(header: { headers[$0] }, body: body, maxMessageSize: limit)
    }

    @Test func onlyPostedJSONIsUnary() {
        #expect(ConnectUnary.isUnaryRequest(method: "POST", contentType: "application/json"))
        #expect(ConnectUnary.isUnaryRequest(method: "POST", contentType: "application/json; charset=utf-8"))
        #expect(!ConnectUnary.isUnaryRequest(method: "GET", contentType: "application/json"))
        #expect(!ConnectUnary.isUnaryRequest(method: "POST", contentType: "application/connect+json"))
        #expect(!ConnectUnary.isUnaryRequest(method: "POST", contentType: nil))
    }

    @Test func inflatesAGzipBodyAndNegotiatesTheResponseAndDeadline() throws {
        let message = Array(#"{"stream_id":"s1"}"#.utf8)
        let headers = [
            "content-encoding": "gzip", "accept-encoding": "gzip", "connect-protocol-version": "1", "connect-timeout-ms": "250",
        ]
        let call = try decode(headers, Gzip.compress(message)).get()
        #expect(call == ConnectUnary.Call(message: message, responseEncoding: .gzip, timeout: .milliseconds(250)))
        #expect(try decode([:], message).get() == ConnectUnary.Call(message: message, responseEncoding: .identity, timeout: nil))
    }

    @Test func badRequestsFailWithTheirCode() {
        #expect(failure(decode(["connect-protocol-version": "2"], []))?.code == .invalidArgument)
        #expect(failure(decode(["content-encoding": "br"], []))?.code == .unimplemented)
        #expect(failure(decode(["connect-timeout-ms": "soon"], []))?.code == .invalidArgument)
        let corrupt = failure(decode(["content-encoding": "gzip"], Array("not gzip".utf8)))
        #expect(corrupt?.code == .invalidArgument)
        #expect(corrupt?.message.contains("gzip") == true)
        let bomb = Gzip.compress([UInt8](repeating: 0x20, count: 4096))
        #expect(failure(decode(["content-encoding": "gzip"], bomb, limit: 100))?.code == .resourceExhausted)
    }

    @Test func successIs200WithTheBareMessage() {
        let response = ConnectUnary.response(code: .ok, message: "", messages: [Array("{}".utf8)], encoding: .identity, compressMinBytes: 0)
        #expect(response.status == 200)
        #expect(response.body == Array("{}".utf8))
        #expect(response.headers.contains { $0 == ("content-type", "application/json") })
    }

    @Test func errorsUseConnectsHTTPStatusAndLowerSnakeCaseCode() throws {
        let response = ConnectUnary.response(
            code: .notFound, message: "no stream s1", messages: [], encoding: .identity, compressMinBytes: .max)
        #expect(response.status == 404)
        let body = try JSONValue(parsing: response.body)
        #expect(body == .object(["code": .string("not_found"), "message": .string("no stream s1")]))
        let deadline = ConnectUnary.response(
            code: .deadlineExceeded, message: "", messages: [], encoding: .identity, compressMinBytes: .max)
        #expect(deadline.status == 504)
        #expect(try JSONValue(parsing: deadline.body) == .object(["code": .string("deadline_exceeded")]))
    }

    @Test func aUnaryMethodMustWriteExactlyOneMessage() throws {
        let none = ConnectUnary.response(code: .ok, message: "", messages: [], encoding: .identity, compressMinBytes: .max)
        #expect(none.status == 500)
        #expect(try JSONValue(parsing: none.body).objectValue?["code"] == .string("internal"))
        let two = ConnectUnary.response(code: .ok, message: "", messages: [[1], [2]], encoding: .identity, compressMinBytes: .max)
        #expect(two.status == 500)
    }

    @Test func aLargeResponseIsGzippedWhenAccepted() throws {
        let message = Array(("{\"text\":\"" + String(repeating: "a", count: 2000) + "\"}").utf8)
        let response = ConnectUnary.response(code: .ok, message: "", messages: [message], encoding: .gzip, compressMinBytes: 1024)
        #expect(response.headers.contains { $0 == ("content-encoding", "gzip") })
        #expect(try Gzip.decompress(response.body, limit: 1 << 20) == message)
    }

    /// Runs `ConnectUnary.handler` around `rpc` with the given request headers; returns the status and JSON body.
    private func serve(_ headers: [(name: String, value: String)], _ rpc: @escaping RPCHandler) async throws -> (Int?, JSONValue) {
        let outbound = StreamOutbound(capacity: 1 << 20, framing: .raw, endStreamEnvelope: nil) {}
        let request = HTTPRequest(method: "POST", path: "/a.B/C", query: nil, headers: headers, body: Array("{}".utf8))
        try await ConnectUnary.handler(rpc, maxMessageSize: 1024, compressMinBytes: .max)(request, HTTPResponseWriter(outbound: outbound))
        var body = [UInt8](repeating: 0, count: 4096)
        let count = body.withUnsafeMutableBytes { outbound.drain(into: $0).byteCount }
        let status = outbound.head?.first { $0.0 == ":status" }.flatMap { Int($0.1) }
        return (status, try JSONValue(parsing: body[..<count]))
    }

    @Test func theHandlerEndsAtItsDeadlineWith504() async throws {
        let (status, body) = try await serve([("connect-timeout-ms", "20")]) { _, _ in try await Task.sleep(for: .seconds(60)) }
        #expect(status == 504)
        #expect(body.objectValue?["code"] == .string("deadline_exceeded"))
    }

    @Test func aHandlersErrorAndItsMessageAreTheResponse() async throws {
        let (status, body) = try await serve([]) { _, _ in throw RPCError(.notFound, "no stream s1") }
        #expect(status == 404)
        #expect(body == .object(["code": .string("not_found"), "message": .string("no stream s1")]))
        let (okStatus, okBody) = try await serve([]) { request, writer in try await writer.write(request.message) }
        #expect(okStatus == 200)
        #expect(okBody == .object([:]))
    }

    private func failure(_ result: Result<ConnectUnary.Call, RPCError>) -> RPCError? {
        if case .failure(let error) = result { return error }
        return nil
    }
}
