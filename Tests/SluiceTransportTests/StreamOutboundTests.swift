import Dispatch
import SluiceIO
import SluiceWire
import Synchronization
import Testing

@testable import SluiceTransport

@Suite struct StreamOutboundTests {
    final class WakeCounter: Sendable {
        let count = Atomic<Int>(0)
        func wake() { count.add(1, ordering: .relaxed) }
        var value: Int { count.load(ordering: .relaxed) }
    }

    private func makeOutbound(capacity: Int = 64, connect: Bool = false, counter: WakeCounter) -> StreamOutbound {
        var endStream: (@Sendable (StatusCode, String) -> [UInt8])?
        if connect {
            endStream = { code, message in
                EnvelopeEncoder.encode(ConnectEndStream.body(status: code, message: message), flags: .endStream)
            }
        }
        return StreamOutbound(capacity: capacity, endStreamEnvelope: endStream, wakeLoop: { counter.wake() })
    }

    private func drainAll(_ outbound: StreamOutbound, chunk: Int = 16) -> (bytes: [UInt8], last: StreamOutbound.Drained) {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: chunk)
        while true {
            let drained = buffer.withUnsafeMutableBytes { outbound.drain(into: $0) }
            bytes += buffer[0..<drained.byteCount]
            if drained.endOfStream || drained.byteCount == 0 { return (bytes, drained) }
        }
    }

    @Test func queuedMessagesAreCoalescedInOrderThenStatus() async throws {
        let counter = WakeCounter()
        let outbound = makeOutbound(capacity: 1024, counter: counter)
        try await outbound.write(Array("one".utf8))
        try await outbound.write(Array("two".utf8))
        #expect(counter.value == 1, "a burst of writes wakes the loop once")
        outbound.finish(.ok, "")
        let (bytes, last) = drainAll(outbound, chunk: 1024)
        #expect(bytes == EnvelopeEncoder.encode(Array("one".utf8)) + EnvelopeEncoder.encode(Array("two".utf8)))
        #expect(last.endOfStream)
        #expect(last.status?.code == .ok)
    }

    @Test func messagesAtLeastTheMinimumAreCompressedForAGzipClient() async throws {
        let counter = WakeCounter()
        let outbound = StreamOutbound(
            capacity: 64 * 1024, endStreamEnvelope: nil, responseEncoding: .gzip, compressMinBytes: 100, wakeLoop: { counter.wake() })
        let small = Array(String(repeating: "a", count: 99).utf8)
        let large = Array(String(repeating: "a", count: 100).utf8)
        try await outbound.write(small)
        #expect(outbound.tryWrite(large))
        outbound.finish(.ok, "")
        let bytes = drainAll(outbound, chunk: 1024).bytes
        #expect(bytes[0] == 0, "below the minimum: sent as it is")
        #expect(bytes[5 + small.count] == EnvelopeFlags.compressed.rawValue)
        #expect(bytes.count < 2 * 5 + small.count + large.count)
        var decoder = EnvelopeDecoder(encoding: .gzip)
        decoder.append(bytes)
        #expect(try decoder.next() == Envelope(payload: small))
        #expect(try decoder.next() == Envelope(payload: large), "inflated back by the decoder")
        #expect(try decoder.next() == nil)
    }

    final class DeliveryLog: Sendable {
        let latencies = LockedValue<[Duration]>([])
        func record(_ latency: Duration) { latencies.withLock { $0.append(latency) } }
        var value: [Duration] { latencies.withLock { $0 } }
    }

    private func drainOnce(_ outbound: StreamOutbound, upTo count: Int) -> Int {
        var buffer = [UInt8](repeating: 0, count: count)
        return buffer.withUnsafeMutableBytes { outbound.drain(into: $0) }.byteCount
    }

    @Test func aMessageIsReportedDeliveredWhenItsLastByteIsDrained() async throws {
        let log = DeliveryLog()
        let outbound = StreamOutbound(capacity: 1024, endStreamEnvelope: nil, messageDelivered: { log.record($0) }, wakeLoop: {})
        let since = ContinuousClock.now - .milliseconds(30)
        try await outbound.write([UInt8](repeating: 1, count: 10), since: since)  // 15 bytes enveloped
        #expect(outbound.tryWrite([UInt8](repeating: 2, count: 10), since: .now))
        try await outbound.write([UInt8](repeating: 3, count: 10))  // no instant: never reported

        #expect(drainOnce(outbound, upTo: 14) == 14)
        #expect(log.value.isEmpty, "one byte of the first message is still queued")
        #expect(drainOnce(outbound, upTo: 1) == 1)
        #expect(log.value.count == 1)
        #expect(log.value[0] >= .milliseconds(30), "measured from the instant given, not from the write")
        #expect(drainOnce(outbound, upTo: 100) == 30)
        #expect(log.value.count == 2, "the message written without an instant is not reported")
    }

    @Test func messagesDroppedWithTheCallAreNotReported() async throws {
        let log = DeliveryLog()
        let outbound = StreamOutbound(capacity: 1024, endStreamEnvelope: nil, messageDelivered: { log.record($0) }, wakeLoop: {})
        try await outbound.write([1, 2, 3], since: .now)
        #expect(outbound.abort(.deadlineExceeded, "deadline exceeded"))
        _ = drainAll(outbound)
        #expect(log.value.isEmpty)

        let closed = StreamOutbound(capacity: 1024, endStreamEnvelope: nil, messageDelivered: { log.record($0) }, wakeLoop: {})
        try await closed.write([1, 2, 3], since: .now)
        closed.close(RPCError(.cancelled, "reset"), disconnect: .reset(errorCode: 8))
        _ = drainAll(closed)
        #expect(log.value.isEmpty)
    }

    @Test func drainingEmptyQueueMarksLoopIdleSoTheNextWriteWakesIt() async throws {
        let counter = WakeCounter()
        let outbound = makeOutbound(capacity: 1024, counter: counter)
        try await outbound.write([1])
        _ = drainAll(outbound)
        #expect(counter.value == 1)
        try await outbound.write([2])
        #expect(counter.value == 2)
    }

    @Test func writerSuspendsAboveCapacityUntilTheLoopDrains() async throws {
        let counter = WakeCounter()
        let outbound = makeOutbound(capacity: 64, counter: counter)
        let written = Atomic<Int>(0)
        let producer = Task {
            for _ in 0..<10 {
                try await outbound.write([UInt8](repeating: 7, count: 40))
                written.add(1, ordering: .relaxed)
            }
            outbound.finish(.ok, "")
        }
        // The producer can queue at most capacity + one message before it must wait.
        var total: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 8)
        var maxQueuedMessages = 0
        while true {
            await Task.yield()
            let drained = buffer.withUnsafeMutableBytes { outbound.drain(into: $0) }
            total += buffer[0..<drained.byteCount]
            maxQueuedMessages = max(maxQueuedMessages, written.load(ordering: .relaxed) - total.count / 45)
            if drained.endOfStream { break }
        }
        try await producer.value
        #expect(total.count == 10 * 45)
        #expect(maxQueuedMessages <= 3, "queue stayed bounded: at most \(maxQueuedMessages) messages ahead")
    }

    @Test func closingFailsAWaitingWriter() async throws {
        let counter = WakeCounter()
        let outbound = makeOutbound(capacity: 8, counter: counter)
        let producer = Task { try await outbound.write([UInt8](repeating: 1, count: 100)) }
        await #expect(throws: (any Error).self) {
            // The first write queues above capacity and waits; closing must release it with an error.
            Task { outbound.close(RPCError(.cancelled, "gone"), disconnect: .connectionLost) }
            try await producer.value
        }
        await #expect(throws: RPCError.self) { try await outbound.write([1]) }
    }

    @Test func abortDropsQueuedMessagesAndReportsTheStatus() async throws {
        let counter = WakeCounter()
        let outbound = makeOutbound(capacity: 1024, counter: counter)
        try await outbound.write([UInt8](repeating: 1, count: 100))
        #expect(outbound.abort(.deadlineExceeded, "too slow"))
        let (bytes, last) = drainAll(outbound)
        #expect(bytes.isEmpty)
        #expect(last.status?.code == .deadlineExceeded)
        #expect(!outbound.abort(.cancelled, "again"), "a call ends once")
    }

    @Test func anImmediateErrorIsTrailersOnlyForGRPC() {
        let outbound = makeOutbound(counter: WakeCounter())
        #expect(outbound.responseShape(trailersOnlyAllowed: true) == nil, "nothing is known before the handler acts")
        outbound.finish(.unimplemented, "no such method")
        let shape = outbound.responseShape(trailersOnlyAllowed: true)
        #expect(shape?.trailersOnly == true)
        #expect(shape?.status?.code == .unimplemented)
    }

    @Test func connectEndsWithAnEndStreamEnvelope() async throws {
        let outbound = makeOutbound(connect: true, counter: WakeCounter())
        try await outbound.write(Array("{}".utf8))
        outbound.finish(.resourceExhausted, "full")
        #expect(outbound.responseShape(trailersOnlyAllowed: false)?.trailersOnly == false)
        var decoder = EnvelopeDecoder()
        decoder.append(drainAll(outbound).bytes)
        #expect(try decoder.next() == Envelope(flags: [], payload: Array("{}".utf8)))
        let end = try #require(try decoder.next())
        #expect(end.flags == .endStream)
        #expect(try ConnectEndStream.parse(end.payload) == (.resourceExhausted, "full"))
    }

    @Test func rawFramingNeedsAHeadBeforeBody() async throws {
        let outbound = StreamOutbound(capacity: 64, framing: .raw, endStreamEnvelope: nil, wakeLoop: {})
        await #expect(throws: RPCError.self) { try await outbound.write([1]) }
        try outbound.setHead([(":status", "200")])
        try await outbound.write(Array("hello".utf8))
        outbound.finish(.ok, "")
        #expect(drainAll(outbound).bytes == Array("hello".utf8))
    }

    /// The loop side on its own thread, as in the server: woken by the queue, draining until it would idle.
    /// Every message arrives once, in order, whole, while the writer keeps waiting for room (run under TSan too).
    @Test(.timeLimit(.minutes(2))) func aWriterAndALoopOnAnotherThreadHandOverEveryMessageInOrder() async throws {
        final class Loop: Sendable {
            let queue = DispatchQueue(label: "outbound loop")
            let outbound = LockedValue<StreamOutbound?>(nil)
            let received = LockedValue<[UInt8]>([])
            let ended = Atomic<Bool>(false)

            func drain() {
                guard let outbound = outbound.withLock({ $0 }) else { return }
                var buffer = [UInt8](repeating: 0, count: 37)
                while true {
                    let drained = buffer.withUnsafeMutableBytes { outbound.drain(into: $0) }
                    received.withLock { $0 += buffer[0..<drained.byteCount] }
                    if drained.endOfStream { return ended.store(true, ordering: .releasing) }
                    if drained.byteCount == 0 { return }  // idle: the next write wakes the loop
                }
            }
        }
        let loop = Loop()
        let outbound = StreamOutbound(capacity: 256, endStreamEnvelope: nil, wakeLoop: { loop.queue.async { loop.drain() } })
        loop.outbound.withLock { $0 = outbound }
        let messages = (0..<3_000).map { [UInt8](repeating: UInt8($0 % 251), count: 1 + $0 % 97) }
        let writer = Task.detached {
            for message in messages { try await outbound.write(message) }
            outbound.finish(.ok, "")
        }
        try await writer.value
        while !loop.ended.load(ordering: .acquiring) { await Task.yield() }
        var decoder = EnvelopeDecoder()
        decoder.append(loop.received.withLock { $0 })
        var decoded: [[UInt8]] = []
        while let envelope = try decoder.next() { decoded.append(envelope.payload) }
        #expect(decoded.count == messages.count)
        #expect(decoded == messages)
    }
}
