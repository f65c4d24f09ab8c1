import Logging
import SluiceIO
import SluiceStore
import Testing

/// `RedisConnection` against a real `redis-server`: pipelined commands, replies in order, and surviving a restart.
@Suite(.serialized) struct RedisConnectionTests {
    enum Event: Sendable, Equatable {
        case up(Bool)
        case reply([String], RedisReply)
        case dropped([String])
    }

    /// A connection on a running loop, its events as a stream.
    final class Harness: @unchecked Sendable {
        let loop: EventLoop
        let events: AsyncStream<Event>
        private let continuation: AsyncStream<Event>.Continuation
        var connection: RedisConnection!

        init(url: String, maxQueuedBytes: Int = 1 << 20) throws {
            loop = try EventLoop(index: 0)
            (events, continuation) = AsyncStream<Event>.makeStream()
            let endpoint = try RedisEndpoint(url: url)
            let continuation = continuation
            let text: (RedisConnection.Command) -> [String] = { $0.arguments.map { String(decoding: $0, as: UTF8.self) } }
            connection = RedisConnection(
                loop: loop, endpoint: endpoint, maxQueuedBytes: maxQueuedBytes,
                backoff: .init(initial: .milliseconds(20), maximum: .milliseconds(200)), logger: Logger(label: "test"),
                onReply: { continuation.yield(.reply(text($0), $1.copy())) }, onDropped: { continuation.yield(.dropped($0.flatMap(text))) },
                onUpChanged: { continuation.yield(.up($0)) })
            loop.start()
            loop.execute { self.connection.start() }
        }

        func send(_ arguments: String...) {
            loop.execute { self.connection.send(.init(arguments)) }
        }

        func stop() {
            loop.execute { self.connection.close() }
            loop.stop()
        }
    }

    @Test func repliesComeBackInOrder() async throws {
        let redis = try RedisTestServer()
        let harness = try Harness(url: redis.url)
        defer { harness.stop() }
        var events = harness.events.makeAsyncIterator()
        #expect(await events.next() == .up(true))
        harness.send("SET", "k", "v1")
        harness.send("APPEND", "k", "v2")
        harness.send("GET", "k")
        harness.send("XADD", "log", "0-1", "f", "x")
        harness.send("XADD", "log", "0-1", "f", "y")
        #expect(await events.next() == .reply(["SET", "k", "v1"], .status("OK")))
        #expect(await events.next() == .reply(["APPEND", "k", "v2"], .integer(4)))
        #expect(await events.next() == .reply(["GET", "k"], .string(Array("v1v2".utf8))))
        #expect(await events.next() == .reply(["XADD", "log", "0-1", "f", "x"], .string(Array("0-1".utf8))))
        // The log refuses a second writer of the same seq.
        guard case .reply(_, .error(let message)) = await events.next() else {
            Issue.record("a second XADD 0-1 was not refused")
            return
        }
        #expect(message.contains("equal or smaller"))
    }

    @Test func aPipelineLargerThanTheSocketTakesAtOnceGoesOutWhole() async throws {
        let redis = try RedisTestServer()
        let harness = try Harness(url: redis.url, maxQueuedBytes: 64 << 20)
        defer { harness.stop() }
        var events = harness.events.makeAsyncIterator()
        #expect(await events.next() == .up(true))
        let value = String(repeating: "v", count: 8 << 20)
        // Issued in one task, written as one pipeline of 32 MiB: the socket takes it in parts, on write readiness.
        harness.loop.execute {
            for index in 0..<4 { harness.connection.send(.init(["SET", "k\(index)", value])) }
            harness.connection.send(.init(["STRLEN", "k3"]))
        }
        for index in 0..<4 { #expect(await events.next() == .reply(["SET", "k\(index)", value], .status("OK"))) }
        #expect(await events.next() == .reply(["STRLEN", "k3"], .integer(8 << 20)))
        // And the connection goes on as usual once the socket took everything.
        harness.send("GET", "k0")
        #expect(await events.next() == .reply(["GET", "k0"], .string(Array(value.utf8))))
    }

    @Test func commandsQueuedWhileRedisIsDownGoOutWhenItIsBack() async throws {
        let redis = try RedisTestServer()
        let harness = try Harness(url: redis.url)
        defer { harness.stop() }
        var events = harness.events.makeAsyncIterator()
        #expect(await events.next() == .up(true))
        redis.stop()
        #expect(await events.next() == .up(false))
        harness.send("SET", "after", "restart")
        try redis.start()
        #expect(await events.next() == .up(true))
        #expect(await events.next() == .reply(["SET", "after", "restart"], .status("OK")))
        #expect(try redis.cli("GET", "after") == "restart")
    }

    @Test func aFullQueueWhileDownDropsAndReports() async throws {
        let redis = try RedisTestServer()
        // Encoded as Redis reads them, SET a 1 takes 27 bytes and SET b 0123456789 37: the second does not fit.
        let harness = try Harness(url: redis.url, maxQueuedBytes: 40)
        defer { harness.stop() }
        var events = harness.events.makeAsyncIterator()
        #expect(await events.next() == .up(true))
        redis.stop()
        #expect(await events.next() == .up(false))
        harness.send("SET", "a", "1")
        harness.send("SET", "b", "0123456789")
        #expect(await events.next() == .dropped(["SET", "b", "0123456789"]))
        try redis.start()
        #expect(await events.next() == .up(true))
        #expect(await events.next() == .reply(["SET", "a", "1"], .status("OK")))
    }

    @Test func aServerThatIsNotThereIsRetriedUntilItComes() async throws {
        let redis = try RedisTestServer()
        redis.stop()
        let harness = try Harness(url: redis.url)
        defer { harness.stop() }
        var events = harness.events.makeAsyncIterator()
        harness.send("PING")
        try redis.start()
        #expect(await events.next() == .up(true))
        #expect(await events.next() == .reply(["PING"], .status("PONG")))
    }

    @Test func authenticatesWithThePasswordAndRetriesAWrongOneUntilRedisAcceptsIt() async throws {
        let redis = try RedisTestServer()
        _ = try redis.cli("CONFIG", "SET", "requirepass", "first")
        let harness = try Harness(url: "redis://:second@127.0.0.1:\(redis.port)")
        defer { harness.stop() }
        var events = harness.events.makeAsyncIterator()
        harness.send("SET", "k", "v")
        // Refused (AUTH fails), retried with backoff; up once Redis takes that password.
        _ = try redis.cli("-a", "first", "--no-auth-warning", "CONFIG", "SET", "requirepass", "second")
        #expect(await events.next() == .up(true))
        #expect(await events.next() == .reply(["SET", "k", "v"], .status("OK")))
    }
}
