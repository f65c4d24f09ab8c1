import SluiceClient
import SluiceTesting
import SluiceWire
import Testing

/// The transport and service layers through a whole in-process server: framing, statuses, routes.
@Suite struct StreamingServiceTests {
    static let sendMessage = SluiceClient.sendMessagePath

    static func request(tokens: Int = 5, intervalMilliseconds: Int = 1, extra: [String: JSONValue] = [:]) -> JSONValue {
        var fields: [String: JSONValue] = [
            "model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [["role": "user", "content": "Tell me about rivers."]],
            "simulation": ["output_tokens": .integer(tokens), "token_interval_ms": .integer(intervalMilliseconds), "seed": 3],
        ]
        fields.merge(extra) { $1 }
        return .object(fields)
    }

    /// The README's contract for one call's events: seq 1, 2, 3… of one stream, message_start first
    /// (no queueing here), and `last` last.
    static func expectContract(_ events: [JSONValue], after seq: Int = 0, last: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(!events.isEmpty, "no events", sourceLocation: sourceLocation)
        #expect(events.map { $0["seq"]?.intValue ?? -1 } == Array(seq + 1..<seq + 1 + events.count), sourceLocation: sourceLocation)
        #expect(Set(events.compactMap { $0["stream_id"]?.stringValue }).count == 1, sourceLocation: sourceLocation)
        #expect(events.allSatisfy { $0["stream_id"]?.stringValue?.hasPrefix("st_") == true }, sourceLocation: sourceLocation)
        if seq == 0 { #expect(events.first?["type"] == "message_start", sourceLocation: sourceLocation) }
        #expect(events.last?["type"]?.stringValue == last, sourceLocation: sourceLocation)
    }

    @Test func sendMessageOverGRPC() async throws {
        try await SluiceTestServer.run { server in
            let result = await server.grpc(Self.sendMessage, json: Self.request())
            #expect(result.status.code == .ok)
            #expect(result.status.httpStatus == 200)
            Self.expectContract(result.json, last: "stream_complete")
            let text = result.json.filter { $0["type"] == "message_delta" }.compactMap { $0["delta"]?.stringValue }.joined()
            #expect(!text.isEmpty)
            #expect(result.json.last?["usage"]?["output_tokens"] == 5)
        }
    }

    @Test func sendMessageOverConnect() async throws {
        try await SluiceTestServer.run { server in
            let result = await server.connect(Self.sendMessage, json: Self.request())
            #expect(result.status.code == .ok, "\(result.status)")
            Self.expectContract(result.json, last: "stream_complete")
            // The same request over gRPC gives the same events, stream id aside.
            let grpc = await server.grpc(Self.sendMessage, json: Self.request())
            #expect(result.json.map { $0["delta"] } == grpc.json.map { $0["delta"] })
        }
    }

    @Test func aPassedDeadlineEndsTheStreamWithDeadlineExceeded() async throws {
        try await SluiceTestServer.run { server in
            let result = await server.grpc(
                Self.sendMessage, json: Self.request(tokens: 200, intervalMilliseconds: 20), timeout: .milliseconds(300)
            )
            #expect(result.status.code == .deadlineExceeded)
            Self.expectContract(result.json, last: "stream_error")
            #expect(result.json.last?["details"]?["code"] == "DEADLINE_EXCEEDED")

            let connect = await server.connect(
                Self.sendMessage, json: Self.request(tokens: 200, intervalMilliseconds: 20), timeout: .milliseconds(300)
            )
            #expect(connect.status.code == .deadlineExceeded, "connect-timeout-ms")
            Self.expectContract(connect.json, last: "stream_error")
        }
    }

    @Test func anInvalidRequestIsInvalidArgumentNamingTheField() async throws {
        try await SluiceTestServer.run { server in
            var missing = Self.request()
            if case .object(var fields) = missing {
                fields["max_tokens"] = nil
                missing = .object(fields)
            }
            let result = await server.grpc(Self.sendMessage, json: missing)
            #expect(result.status.code == .invalidArgument)
            #expect(result.status.message.contains("'max_tokens'"), "\(result.status.message)")
            #expect(result.messages.isEmpty)

            let notJSON = await server.grpc(Self.sendMessage, message: Array("{not json".utf8))
            #expect(notJSON.status.code == .invalidArgument)

            let connect = await server.connect(Self.sendMessage, json: Self.request(extra: ["model": 7]))
            #expect(connect.status.code == .invalidArgument)
            #expect(connect.status.message.contains("'model'"), "\(connect.status.message)")

            let resume = await server.grpc(SluiceClient.resumePath, json: ["after_seq": 1])
            #expect(resume.status.code == .invalidArgument)
            #expect(resume.status.message.contains("'stream_id'"))
        }
    }

    @Test func anUnknownMethodIsUnimplemented() async throws {
        try await SluiceTestServer.run { server in
            let result = await server.grpc("/sluice.v1.StreamingService/Nope", json: [:])
            #expect(result.status.code == .unimplemented)
            #expect(result.status.message.contains("/sluice.v1.StreamingService/Nope"), "\(result.status.message)")
        }
    }

    @Test func resumeAfterADetachContinuesAfterTheGivenSeq() async throws {
        try await SluiceTestServer.run { server in
            // The first client reads three events, then its connection goes away: the stream only detaches.
            let first = try server.client()
            let call = first.startCall(path: Self.sendMessage, message: Self.request(tokens: 60, intervalMilliseconds: 5).serialized())
            var seen: [JSONValue] = []
            for try await message in call {
                seen.append(try JSONValue(parsing: message))
                if seen.count == 3 { break }
            }
            let streamID = try #require(seen.first?["stream_id"]?.stringValue)
            await first.shutdown()

            let resumed = await server.grpc(SluiceClient.resumePath, json: ["stream_id": .string(streamID), "after_seq": 3])
            #expect(resumed.status.code == .ok, "\(resumed.status)")
            Self.expectContract(resumed.json, after: 3, last: "stream_complete")
            #expect(resumed.json.first?["stream_id"]?.stringValue == streamID)

            let unknown = await server.grpc(SluiceClient.resumePath, json: ["stream_id": "st_0000000000000000"])
            #expect(unknown.status.code == .notFound)
        }
    }

    @Test func cancelEndsTheStreamWithCancelled() async throws {
        try await SluiceTestServer.run { server in
            let client = try server.client()
            let call = client.startCall(path: Self.sendMessage, message: Self.request(tokens: 400, intervalMilliseconds: 5).serialized())
            var events: [JSONValue] = []
            do {
                for try await message in call {
                    events.append(try JSONValue(parsing: message))
                    if events.count == 2 {
                        let id = events[0]["stream_id"] ?? .null
                        let cancelled = await server.grpc(SluiceClient.cancelPath, json: ["stream_id": id])
                        #expect(cancelled.status.code == .ok)
                        #expect(cancelled.json == [["stream_id": id, "cancelled": true]])
                    }
                }
            } catch {}
            #expect(await call.status.code == .cancelled)
            Self.expectContract(events, last: "stream_error")
            #expect(events.last?["details"]?["code"] == "CANCELLED")
            await client.shutdown()

            let unknown = await server.grpc(SluiceClient.cancelPath, json: ["stream_id": "st_0000000000000000"])
            #expect(unknown.status.code == .notFound)
        }
    }

    @Test func healthOverHTTP1AndGRPCOnTheSamePort() async throws {
        try await SluiceTestServer.run { server in
            let live = try await server.http1("GET", "/healthz")
            #expect(live.status == 200)
            let ready = try await server.http1("GET", "/readyz")
            #expect(ready.status == 200)
            let check = await server.grpc("/grpc.health.v1.Health/Check", json: ["service": ""])
            #expect(check.status.code == .ok)
            #expect(check.json == [["status": "SERVING"]])
            let missing = try await server.http1("GET", "/no/such/page")
            #expect(missing.status == 404)
            // gRPC needs HTTP/2 (trailers); over HTTP/1.1 the answer says so instead of failing obscurely.
            let rpc = try await server.http1(
                "POST", Self.sendMessage, headers: [("content-type", "application/grpc+json")],
                body: EnvelopeEncoder.encode(Self.request().serialized())
            )
            #expect(rpc.status == 505)
            #expect(rpc.text.contains("need HTTP/2") && rpc.text.contains("Connect"), "\(rpc.text)")
            // Connect carries its status in the body: it streams over HTTP/1.1, ending with the end-stream message.
            let connect = try await server.http1(
                "POST", Self.sendMessage, headers: [("content-type", "application/connect+json")],
                body: EnvelopeEncoder.encode(Self.request().serialized())
            )
            #expect(connect.status == 200)
            var decoder = EnvelopeDecoder()
            decoder.append(connect.body)
            var envelopes: [Envelope] = []
            while let envelope = try decoder.next() { envelopes.append(envelope) }
            #expect(envelopes.last == Envelope(flags: .endStream, payload: Array("{}".utf8)))
            #expect(envelopes.dropLast().contains { String(decoding: $0.payload, as: UTF8.self).contains("stream_complete") })
        }
    }

    @Test func serverSentEventsCarryTheRPCFrames() async throws {
        try await SluiceTestServer.run { server in
            let created = try await server.http1(
                "POST", "/v1/streams", headers: [("content-type", "application/json")], body: Self.request().serialized()
            )
            #expect(created.status == 201, "\(created.text)")
            let streamID = try #require(created.json?["stream_id"]?.stringValue)
            #expect(created.header("location") == "/v1/streams/\(streamID)/events")

            let read = try await server.http1("GET", "/v1/streams/\(streamID)/events")
            #expect(read.status == 200)
            #expect(read.header("content-type")?.hasPrefix("text/event-stream") == true)
            let events = try read.serverSentEvents()
            let frames = try events.map { try JSONValue(parsing: $0.data) }
            Self.expectContract(frames, last: "stream_complete")
            #expect(events.map(\.id) == frames.map { $0["seq"]?.intValue.map(String.init) })
            #expect(events.map(\.event) == frames.map { $0["type"]?.stringValue ?? "" })

            // After the last event of a finished stream: 204, which stops an EventSource.
            let again = try await server.http1("GET", "/v1/streams/\(streamID)/events", headers: [("last-event-id", String(frames.count))])
            #expect(again.status == 204)
        }
    }

    @Test func anOversizeRequestIsResourceExhausted() async throws {
        try await SluiceTestServer.run({ $0.server.limits.maxMessageSize = 1024 }) { server in
            let big = Self.request(extra: ["system": .string(String(repeating: "x", count: 4096))])
            let result = await server.grpc(Self.sendMessage, json: big)
            #expect(result.status.code == .resourceExhausted)
            #expect(result.messages.isEmpty)
            // The limit is on the message: a small one still goes through.
            #expect(await server.grpc(Self.sendMessage, json: Self.request()).status.code == .ok)
        }
    }

    @Test func drainingEndsRunningCallsWithUnavailable() async throws {
        let server = try SluiceTestServer()
        let client = try server.client()
        let call = client.startCall(path: Self.sendMessage, message: Self.request(tokens: 400, intervalMilliseconds: 10).serialized())
        var received = 0
        do {
            for try await _ in call {
                received += 1
                if received == 2 {
                    #expect(!server.isDraining)
                    await server.drain(timeout: .milliseconds(50))
                }
            }
        } catch {}
        let status = await call.status
        #expect(status.code == .unavailable, "\(status)")
        #expect(server.isDraining)
        await client.shutdown()
        await server.shutdown()
    }
}
