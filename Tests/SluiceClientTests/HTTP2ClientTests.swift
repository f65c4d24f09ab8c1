import Logging
import SluiceIO
import SluiceTransport
import SluiceWire
import Synchronization
import Testing

@testable import SluiceClient

@Suite struct HTTP2ClientTests {
    /// Runs `body` against an in-process server with `routes`, then shuts both down.
    private func withServer(
        maxStreamsPerConnection: Int = 1000, routes: (inout RPCRouter) -> Void,
        clientConfiguration: HTTP2ClientConfiguration = .init(),
        _ body: (HTTP2Client, String) async throws -> Void
    ) async throws {
        var router = RPCRouter()
        routes(&router)
        var configuration = HTTP2ServerConfiguration()
        configuration.port = 0
        configuration.eventLoops = 1
        configuration.limits.maxStreamsPerConnection = maxStreamsPerConnection
        let server = try HTTP2Server(configuration: configuration, router: router, logger: Logger(label: "test.server"))
        try server.start()
        let client = try HTTP2Client(loops: 2, configuration: clientConfiguration)
        do {
            try await body(client, "http://127.0.0.1:\(server.port)")
        } catch {
            await client.shutdown()
            await server.shutdown(drainTimeout: .zero)
            throw error
        }
        await client.shutdown()
        await server.shutdown(drainTimeout: .zero)
    }

    @Test func messagesThenOKStatus() async throws {
        try await withServer(routes: { router in
            router.register("/test.Echo/Stream") { request, writer in
                #expect(request.header("authorization") == "Bearer secret")
                for index in 1...3 { try await writer.write(Array("\(index):".utf8) + request.message) }
            }
        }) { client, url in
            let call = try client.unaryStream(
                url: url, path: "/test.Echo/Stream", headers: [("authorization", "Bearer secret")], message: Array("hi".utf8)
            )
            var messages: [String] = []
            for try await message in call { messages.append(String(decoding: message, as: UTF8.self)) }
            #expect(messages == ["1:hi", "2:hi", "3:hi"])
            let status = await call.status
            #expect(status.code == .ok)
            #expect(status.httpStatus == 200)
        }
    }

    @Test func errorStatusTrailersOnlyIsPercentDecoded() async throws {
        try await withServer(routes: { router in
            router.register("/test.Echo/Fail") { _, _ in throw RPCError(.notFound, "no such thing: ünïcode 100%") }
        }) { client, url in
            let call = try client.unaryStream(url: url, path: "/test.Echo/Fail", message: [])
            var received = 0
            await #expect(throws: RPCError(.notFound, "no such thing: ünïcode 100%")) {
                for try await _ in call { received += 1 }
            }
            #expect(received == 0)
            #expect(await call.status == RPCClientStatus(code: .notFound, message: "no such thing: ünïcode 100%", httpStatus: 200))

            let unknown = try client.unaryStream(url: url, path: "/test.Echo/Missing", message: [])
            #expect(await unknown.status.code == .unimplemented)
        }
    }

    @Test func httpErrorsAndUnreachableServersMapToStatuses() async throws {
        try await withServer(routes: { router in
            router.registerHTTP("/test.Plain/Busy") { _, writer in
                try writer.head(status: 503, headers: [("content-type", "text/plain")])
                try await writer.write(Array("try later\n".utf8))
            }
        }) { client, url in
            let busy = try await client.unaryStream(url: url, path: "/test.Plain/Busy", message: []).status
            #expect(busy.code == .unavailable)
            #expect(busy.httpStatus == 503)
            #expect(busy.message.contains("HTTP 503") && busy.message.contains("try later"))
        }
        // Port 1 on loopback: nothing listens there.
        let client = try HTTP2Client()
        let refused = try await client.unaryStream(url: "http://127.0.0.1:1", path: "/a.B/C", message: []).status
        #expect(refused.code == .unavailable)
        #expect(refused.message.contains("cannot connect"))
        await client.shutdown()
    }

    @Test func cancellingTheTaskResetsTheServerStream() async throws {
        let disconnect = LockedValue<RPCDisconnect?>(nil)
        let (ended, endedContinuation) = AsyncStream<Void>.makeStream()
        try await withServer(routes: { router in
            router.register("/test.Echo/Forever") { _, writer in
                defer { endedContinuation.yield() }
                do {
                    while true {
                        try await writer.write(Array("tick".utf8))
                        try await Task.sleep(for: .milliseconds(10))
                    }
                } catch {
                    disconnect.withLock { $0 = writer.disconnect }
                    throw error
                }
            }
        }) { client, url in
            let call = try client.unaryStream(url: url, path: "/test.Echo/Forever", message: [])
            let consumer = Task {
                var count = 0
                for try await _ in call {
                    count += 1
                }
                return count
            }
            try await Task.sleep(for: .milliseconds(100))
            consumer.cancel()
            _ = try? await consumer.value
            #expect(await call.status.code == .cancelled)
            for await _ in ended { break }
            #expect(disconnect.withLock { $0 } == .reset(errorCode: 8), "the server saw RST_STREAM(CANCEL)")
        }
    }

    @Test func thousandConcurrentStreamsOverACappedPoolUseSeveralConnections() async throws {
        let total = 1000
        let arrived = Atomic<Int>(0)
        var clientConfiguration = HTTP2ClientConfiguration()
        clientConfiguration.streamsPerConnection = 100
        try await withServer(
            maxStreamsPerConnection: 300,
            routes: { router in
                router.register("/test.Echo/Barrier") { request, writer in
                    // Every stream holds until all have arrived: proves they are concurrent.
                    arrived.add(1, ordering: .relaxed)
                    let deadline = ContinuousClock.now + .seconds(20)
                    while arrived.load(ordering: .relaxed) < total && ContinuousClock.now < deadline {
                        try await Task.sleep(for: .milliseconds(5))
                    }
                    try await writer.write(request.message)
                }
            }, clientConfiguration: clientConfiguration
        ) { client, url in
            let statuses = try await withThrowingTaskGroup(of: (RPCClientStatus, Int).self) { group in
                for index in 0..<total {
                    group.addTask {
                        let call = try client.unaryStream(url: url, path: "/test.Echo/Barrier", message: Array(String(index).utf8))
                        var echoed = -1
                        for try await message in call { echoed = Int(String(decoding: message, as: UTF8.self)) ?? -2 }
                        return (await call.status, echoed == index ? 1 : 0)
                    }
                }
                var results: [(RPCClientStatus, Int)] = []
                for try await result in group { results.append(result) }
                return results
            }
            #expect(statuses.count == total)
            #expect(statuses.allSatisfy { $0.0.code == .ok })
            #expect(statuses.reduce(0) { $0 + $1.1 } == total, "each call got its own echo")
            #expect(arrived.load(ordering: .relaxed) == total)
            // 100 streams per connection, and idle ones stay open: 5 per loop, not 1 nor 1,000.
            #expect((10...20).contains(client.openConnections))
        }
    }
}
