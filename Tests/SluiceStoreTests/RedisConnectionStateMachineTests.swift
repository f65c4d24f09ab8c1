import SluiceStore
import Testing

@Suite struct RedisConnectionStateMachineTests {
    typealias Machine = RedisConnectionStateMachine
    let xadd = Machine.Command(["XADD", "log", "0-1", "frame", "a"], streamID: "st_1")
    let hset = Machine.Command(["HSET", "meta", "status", "running"], streamID: "st_1")

    @Test func queuedWhileConnectingThenSentInOrderOnceUp() {
        var machine = Machine(maxQueuedBytes: 1000)
        #expect(machine.start() == [.connect])
        #expect(machine.enqueue(xadd) == .queued)
        #expect(machine.enqueue(hset) == .queued)
        #expect(machine.connected() == [.reportUp(true), .send([xadd, hset])])
        #expect(machine.replied() == xadd)
        #expect(machine.replied() == hset)
        #expect(machine.queuedCount == 0)
        #expect(machine.queuedBytes == 0)
    }

    @Test func whileUpEachCommandGoesOutAtOnce() {
        var machine = Machine(maxQueuedBytes: 1000)
        _ = machine.start()
        #expect(machine.connected() == [.reportUp(true)])
        #expect(machine.enqueue(xadd) == .send(xadd))
        #expect(machine.queuedCount == 1)
    }

    @Test func unacknowledgedCommandsGoOutAgainAfterReconnecting() {
        var machine = Machine(maxQueuedBytes: 1000, backoff: .init(initial: .milliseconds(100), maximum: .seconds(1)))
        _ = machine.start()
        _ = machine.connected()
        _ = machine.enqueue(xadd)
        _ = machine.enqueue(hset)
        #expect(machine.replied() == xadd)
        #expect(machine.connectionLost() == [.reportUp(false), .scheduleReconnect(after: .milliseconds(100))])
        #expect(machine.state == .down(failures: 1))
        #expect(machine.backoffElapsed() == [.connect])
        #expect(machine.connected() == [.reportUp(true), .send([hset])])
    }

    @Test func backoffDoublesUpToItsMaximumAndResetsOnceUp() {
        var machine = Machine(maxQueuedBytes: 1000, backoff: .init(initial: .milliseconds(100), maximum: .milliseconds(350)))
        _ = machine.start()
        var delays: [Duration] = []
        for _ in 0..<4 {
            for action in machine.connectionLost() { if case .scheduleReconnect(let delay) = action { delays.append(delay) } }
            _ = machine.backoffElapsed()
        }
        #expect(delays == [.milliseconds(100), .milliseconds(200), .milliseconds(350), .milliseconds(350)])
        _ = machine.connected()
        #expect(machine.connectionLost() == [.reportUp(false), .scheduleReconnect(after: .milliseconds(100))])
    }

    @Test func aCommandIsEncodedOnceAsRedisReadsItAndDecodesBack() {
        var command = Machine.Command(count: 3, streamID: "st_x")
        #expect(!command.isComplete)
        command.append("SET")
        command.append(Array("k\r\n".utf8))
        command.append("")
        #expect(command.isComplete)
        #expect(command.encoded == Array("*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n".utf8))
        #expect(command.arguments == [Array("SET".utf8), Array("k\r\n".utf8), []])
        let long = [UInt8](repeating: 7, count: 12_345)
        #expect(Machine.Command([Array("XADD".utf8), long]).arguments == [Array("XADD".utf8), long])
    }

    @Test func aFullQueueDropsNewCommandsAndReportsThem() {
        var machine = Machine(maxQueuedBytes: xadd.bytes + 5)
        _ = machine.start()
        _ = machine.connectionLost()
        #expect(machine.enqueue(xadd) == .queued)
        #expect(machine.enqueue(hset) == .dropped(hset))
        #expect(machine.queuedCount == 1)
        // Room again once Redis acknowledges.
        _ = machine.backoffElapsed()
        #expect(machine.connected() == [.reportUp(true), .send([xadd])])
        #expect(machine.replied() == xadd)
        #expect(machine.enqueue(hset) == .send(hset))
    }

    @Test func closingDropsWhatIsQueuedAndIgnoresLaterEvents() {
        var machine = Machine(maxQueuedBytes: 1000)
        _ = machine.start()
        _ = machine.enqueue(xadd)
        #expect(machine.close() == [.disconnect, .dropped([xadd])])
        #expect(machine.connectionLost() == [])
        #expect(machine.backoffElapsed() == [])
        #expect(machine.enqueue(hset) == .dropped(hset))
        #expect(machine.state == .closed)
    }

    @Test func aLostConnectionWhileDownOrIdleChangesNothing() {
        var machine = Machine(maxQueuedBytes: 1000)
        #expect(machine.connectionLost() == [])
        _ = machine.start()
        _ = machine.connectionLost()
        #expect(machine.connectionLost() == [])
        #expect(machine.state == .down(failures: 1))
    }
}

@Suite struct RedisEndpointTests {
    @Test func parsesEveryPart() throws {
        let endpoint = try RedisEndpoint(url: "redis://app:s3cret@redis.internal:6380/2")
        #expect(endpoint == RedisEndpoint(host: "redis.internal", port: 6380, user: "app", password: "s3cret", database: 2))
        #expect(try RedisEndpoint(url: "redis://127.0.0.1") == RedisEndpoint(host: "127.0.0.1"))
        #expect(try RedisEndpoint(url: "redis://:pw@h:1/") == RedisEndpoint(host: "h", port: 1, password: "pw"))
    }

    @Test func descriptionNeverShowsThePassword() throws {
        #expect(try RedisEndpoint(url: "redis://app:s3cret@h:6380/2").description == "redis://app@h:6380/2")
        #expect(try RedisEndpoint(url: "redis://s3cret@h:6380").description == "redis://***@h:6380/0")
    }

    @Test func rejectsWhatIsNotARedisURL() {
        #expect(throws: RedisEndpoint.ParseError.self) { try RedisEndpoint(url: "http://h:1") }
        #expect(throws: RedisEndpoint.ParseError.self) { try RedisEndpoint(url: "redis://h:99999") }
        #expect(throws: RedisEndpoint.ParseError.self) { try RedisEndpoint(url: "redis://h:1/x") }
        #expect(throws: RedisEndpoint.ParseError.self) { try RedisEndpoint(url: "redis://:1") }
    }
}
