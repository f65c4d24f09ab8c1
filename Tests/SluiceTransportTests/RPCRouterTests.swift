import Testing

@testable import SluiceTransport

@Suite struct RPCRouterTests {
    /// Each handler answers with its own status, so a test can tell which one a path reached.
    private func handler(_ status: Int) -> HTTPHandler {
        { _, writer in try writer.head(status: status) }
    }

    /// The status the handler routed for `path` answers with, or nil when no handler is routed.
    private func status(of path: String, in router: RPCRouter) async throws -> Int? {
        guard let handler = router.httpHandler(for: path) else { return nil }
        let outbound = StreamOutbound(capacity: 64, framing: .raw, endStreamEnvelope: nil) {}
        try await handler(HTTPRequest(method: "GET", path: path, query: nil, headers: [], body: []), HTTPResponseWriter(outbound: outbound))
        return outbound.head?.first { $0.0 == ":status" }.flatMap { Int($0.1) }
    }

    @Test func exactPathsWinOverPrefixesAndTheLongestPrefixWins() async throws {
        var router = RPCRouter()
        router.registerHTTP("/v1/streams", handler(201))
        router.registerHTTP(prefix: "/v1/", handler(400))
        router.registerHTTP(prefix: "/v1/streams/", handler(200))
        router.registerHTTP("/v1/streams/special", handler(204))

        #expect(try await status(of: "/v1/streams", in: router) == 201)
        #expect(try await status(of: "/v1/streams/st_1/events", in: router) == 200)
        #expect(try await status(of: "/v1/streams/special", in: router) == 204)
        #expect(try await status(of: "/v1/other", in: router) == 400)
        #expect(try await status(of: "/v2/streams/st_1", in: router) == nil)
        #expect(try await status(of: "/v1", in: router) == nil)
    }
}
