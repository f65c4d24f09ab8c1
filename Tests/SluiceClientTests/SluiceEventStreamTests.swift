import SluiceTesting
import SluiceWire
import Testing

@testable import SluiceClient

/// SluiceClient against a whole in-process server: dropped connections are resumed without a gap or a repeat.
@Suite struct SluiceEventStreamTests {
    private func request(tokens: Int, intervalMilliseconds: Int) -> SluiceMessageRequest {
        var request = SluiceMessageRequest(model: "claude-sonnet-4-5", maxTokens: tokens + 10, prompt: "Tell me about rivers.")
        request.simulation = ["output_tokens": .integer(tokens), "token_interval_ms": .integer(intervalMilliseconds), "seed": 7]
        return request
    }

    @Test func aStreamRunsToStreamComplete() async throws {
        try await SluiceTestServer.run { server in
            let client = try server.client()
            let stream = client.sendMessage(request(tokens: 5, intervalMilliseconds: 1))
            var events: [SluiceEvent] = []
            for try await event in stream { events.append(event) }
            await client.shutdown()
            #expect(events.map(\.seq) == Array(1...events.count))
            #expect(events.first?.type == "message_start")
            guard case .streamComplete(_, let outputTokens)? = events.last?.kind else {
                Issue.record("the last event is \(events.last?.type ?? "missing"), not stream_complete")
                return
            }
            #expect(outputTokens == 5)
            #expect(Set(events.map(\.streamID)).count == 1)
            #expect(await stream.status.code == .ok)
            #expect(stream.resumeCount == 0)
        }
    }

    @Test func droppedConnectionsAreResumedAndEverySeqArrivesExactlyOnce() async throws {
        try await SluiceTestServer.run { server in
            let client = try server.client { $0.resume = SluiceResumePolicy(maxAttempts: 5, initialBackoff: .milliseconds(10)) }
            // About two seconds of stream; the drops come early in it.
            let stream = client.sendMessage(request(tokens: 400, intervalMilliseconds: 5))
            var seqs: [Int] = []
            var lastType = ""
            var drops = [10, 40]
            for try await event in stream {
                seqs.append(event.seq)
                lastType = event.type
                if event.seq == drops.first {
                    drops.removeFirst()
                    client.dropConnections()
                }
            }
            await client.shutdown()
            #expect(drops.isEmpty)
            #expect(seqs == Array(1...seqs.count), "every seq once, in order")
            #expect(lastType == "stream_complete")
            #expect(stream.resumeCount == 2, "one Resume per drop")
            #expect(await stream.status.code == .ok)
        }
    }

    @Test func aStreamTheServerCanNoLongerReplayEndsWithDataLoss() async throws {
        try await SluiceTestServer.run({ $0.engine.replayBufferBytes = 4096 }) { server in
            // The resume waits long enough for the detached stream to run its small replay buffer past the drop.
            let client = try server.client { $0.resume = SluiceResumePolicy(maxAttempts: 3, initialBackoff: .milliseconds(600)) }
            let stream = client.sendMessage(request(tokens: 3000, intervalMilliseconds: 1))
            var seqs: [Int] = []
            await #expect(throws: RPCError.self) {
                for try await event in stream {
                    seqs.append(event.seq)
                    if event.seq == 5 { client.dropConnections() }
                }
            }
            let status = await stream.status
            await client.shutdown()
            #expect(status.code == .dataLoss)
            #expect(status.message.hasPrefix("stream \(stream.streamID ?? "?") cannot be resumed after seq \(seqs.last ?? 0)"))
            #expect(seqs == Array(1...seqs.count))
        }
    }

    @Test func aServerThatStaysAwayEndsTheStreamAfterTheBoundedRetries() async throws {
        let server = try SluiceTestServer()
        let client = try server.client { $0.resume = SluiceResumePolicy(maxAttempts: 2, initialBackoff: .milliseconds(10)) }
        let stream = client.sendMessage(request(tokens: 400, intervalMilliseconds: 5))
        var seqs: [Int] = []
        do {
            for try await event in stream {
                seqs.append(event.seq)
                // A server that stops for good: its calls end with UNAVAILABLE, and its port refuses.
                if event.seq == 3 { await server.shutdown() }
            }
        } catch {}
        let status = await stream.status
        await client.shutdown()
        await server.shutdown()
        #expect(status.code == .unavailable)
        #expect(status.message.contains("gave up after 2 resume attempts"), "\(status.message)")
        #expect(stream.resumeCount == 2)
        #expect(seqs == Array(1...seqs.count))
    }

    @Test func cancellingTheConsumingTaskCancelsTheStreamAndDoesNotResume() async throws {
        try await SluiceTestServer.run { server in
            let client = try server.client()
            let stream = client.sendMessage(request(tokens: 400, intervalMilliseconds: 5))
            let (firstEvent, firstEventSeen) = AsyncStream<String>.makeStream()
            let consumer = Task {
                for try await event in stream where event.seq == 1 { firstEventSeen.yield(event.streamID) }
            }
            var ids = firstEvent.makeAsyncIterator()
            let streamID = try #require(await ids.next())
            consumer.cancel()
            _ = await consumer.result
            let status = await stream.status
            #expect(status.code == .cancelled, "\(status)")
            #expect(stream.resumeCount == 0)
            // The reset reached the server: the stream there ended with stream_error CANCELLED.
            var last: SluiceEvent?
            do { for try await event in client.resume(streamID: streamID) { last = event } } catch {}
            guard case .streamError(_, let code, _)? = last?.kind else {
                Issue.record("the server's stream ended with \(last?.type ?? "nothing"), not stream_error")
                return
            }
            #expect(code == .cancelled)
            await client.shutdown()
        }
    }

    @Test func cancelEndsTheStreamOnTheServer() async throws {
        try await SluiceTestServer.run { server in
            let client = try server.client()
            let stream = client.sendMessage(request(tokens: 400, intervalMilliseconds: 5))
            var types: [String] = []
            await #expect(throws: RPCError.self) {
                for try await event in stream {
                    types.append(event.type)
                    if event.seq == 2 { try await client.cancel(streamID: event.streamID) }
                }
            }
            #expect(types.last == "stream_error")
            #expect(await stream.status.code == .cancelled)
            // The stream is over: Cancel again finds it finished, and Resume replays the same end.
            let replay = client.resume(streamID: stream.streamID ?? "", afterSeq: 0)
            var replayed: [String] = []
            do { for try await event in replay { replayed.append(event.type) } } catch {}
            #expect(replayed == types)
            await client.shutdown()
        }
    }
}
