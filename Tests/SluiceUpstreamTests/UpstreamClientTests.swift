import Foundation
import Glibc
import Logging
import SluiceIO
import SluiceTransport
import SluiceWire
import Testing

@testable import SluiceSimulator
@testable import SluiceUpstream

/// The libcurl client against in-process HTTP/2 servers: hand-written fixtures for exact byte-level cases, and the
/// Anthropic simulator for the scenarios it models.
private let retainedServers = LockedValue<[HTTP2Server]>([])
/// The clients `client(_:)` made for each server, shut down when its `withServer` ends (a `defer` cannot await).
private let clientsByServer = LockedValue<[ObjectIdentifier: [UpstreamClient]]>([:])

@Suite(.serialized) struct UpstreamClientTests {
    static let fakeKey = "sk-ant-api03-SLUICETESTKEY-0123456789abcdef"
    /// A key that the failure sanitizer would not recognise: it must never reach a message at all.
    static let plainFakeKey = "PLAINFAKEKEY-7f3a9c0d2b"

    // MARK: Fixtures

    /// An HTTP/2 (h2c) server on a free port serving `handler` at /v1/messages.
    static func withServer<T>(
        _ handler: @escaping HTTPHandler,
        _ body: (HTTP2Server) async throws -> T
    ) async throws -> T {
        var router = RPCRouter()
        router.registerHTTP("/v1/messages", handler)
        return try await withServer(router: router, body)
    }

    static func withServer<T>(
        router: RPCRouter, tls: Bool = false, _ body: (HTTP2Server) async throws -> T
    ) async throws -> T {
        var configuration = HTTP2ServerConfiguration()
        configuration.port = 0
        configuration.eventLoops = 2
        if tls {
            let files = try TestCertificate.shared.get()
            configuration.tlsCertificatePath = files.certificate
            configuration.tlsPrivateKeyPath = files.key
        }
        let server = try HTTP2Server(configuration: configuration, router: router, logger: Logger(label: "test.server"))
        try server.start()
        // HTTP2Server's connections and streams hold it `unowned`; a handler task finishing after the server
        // object is gone would trap, so test servers stay allocated for the whole run.
        retainedServers.withLock { $0.append(server) }
        let result: Result<T, any Error>
        do {
            result = .success(try await body(server))
        } catch {
            result = .failure(error)
        }
        let clients = clientsByServer.withLock { $0.removeValue(forKey: ObjectIdentifier(server)) ?? [] }
        for client in clients { await client.shutdown() }
        await server.shutdown(drainTimeout: .milliseconds(100))
        return try result.get()
    }

    static func client(
        _ server: HTTP2Server, apiKey: String? = fakeKey, _ tweak: (inout UpstreamConfiguration) -> Void = { _ in }
    ) throws -> UpstreamClient {
        var configuration = UpstreamConfiguration(baseURL: "http://127.0.0.1:\(server.port)", apiKey: apiKey)
        if server.isTLS {
            configuration.baseURL = "https://localhost:\(server.port)"
            configuration.caBundlePath = try TestCertificate.shared.get().certificate
        }
        tweak(&configuration)
        let client = try UpstreamClient(configuration: configuration)
        clientsByServer.withLock { $0[ObjectIdentifier(server), default: []].append(client) }
        return client
    }

    static let requestBody = Array(
        #"{"model":"claude-test","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#.utf8)

    static func sse(_ event: String, _ json: String) -> String { "event: \(event)\ndata: \(json)\n\n" }

    static func textStream(_ chunks: [String], id: String = "msg_fixture") -> [String] {
        var events = [
            sse(
                "message_start",
                #"{"type":"message_start","message":{"id":"\#(id)","type":"message","role":"assistant","model":"claude-test","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":7,"output_tokens":1}}}"#
            ),
            sse("content_block_start", #"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
            sse("ping", #"{"type": "ping"}"#),
        ]
        for chunk in chunks {
            events.append(
                sse("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\#(chunk)"}}"#))
        }
        events += [
            sse("content_block_stop", #"{"type":"content_block_stop","index":0}"#),
            sse(
                "message_delta",
                #"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":\#(chunks.count)}}"#
            ),
            sse("message_stop", #"{"type":"message_stop"}"#),
        ]
        return events
    }

    static let sseHead: [(String, String)] = [("content-type", "text/event-stream"), ("request-id", "req_fixture")]

    /// Consumes a stream to its end: the events, and the failure if it threw.
    static func collect(_ stream: UpstreamStream) async -> (events: [AnthropicEvent], failure: UpstreamFailure?) {
        var events: [AnthropicEvent] = []
        do throws(UpstreamFailure) {
            for try await event in stream { events.append(event) }
            return (events, nil)
        } catch {
            return (events, error)
        }
    }

    /// Polls `condition` until it holds or `timeout` passes (for cleanup that happens asynchronously).
    static func eventually(
        _ timeout: Duration = .seconds(5), _ condition: () -> Bool
    ) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return condition()
    }

    /// Records what the fixture server received.
    final class Recorder: Sendable {
        let requests = LockedValue<[HTTPRequest]>([])
        func record(_ request: HTTPRequest) { requests.withLock { $0.append(request) } }
        var last: HTTPRequest? { requests.withLock { $0.last } }
    }

    // MARK: Fixture server: exact bytes

    @Test func streamsEventsAndSendsHeaders() async throws {
        let recorder = Recorder()
        try await Self.withServer({ request, writer in
            recorder.record(request)
            try writer.head(status: 200, headers: Self.sseHead)
            for event in Self.textStream(["Hello", ", ", "world"]) { try await writer.write(Array(event.utf8)) }
        }) { server in
            let client = try Self.client(server)
            let stream = client.streamMessage(
                body: Self.requestBody,
                headers: [
                    ("sluice-simulation", #"{"seed":1}"#), ("x-api-key", "caller-must-not-override"),
                    ("Anthropic-Beta", "test-beta"),
                ])
            let (events, failure) = await Self.collect(stream)
            #expect(failure == nil)
            var accumulator = MessageAccumulator()
            for event in events { accumulator.apply(event) }
            #expect(accumulator.isComplete)
            #expect(accumulator.message().content == [.text("Hello, world", citations: [])])
            #expect(accumulator.message().id == "msg_fixture")
            #expect(events.contains(.ping))
            #expect(stream.requestID == "req_fixture")
            #expect(stream.responseStatus == 200)
            #expect(stream.responseHeaders?.contains { $0 == ("content-type", "text/event-stream") } == true)

            let request = try #require(recorder.last)
            #expect(request.method == "POST")
            #expect(request.path == "/v1/messages")
            #expect(request.body == Self.requestBody)
            #expect(request.headers.filter { $0.name == "x-api-key" }.map(\.value) == [Self.fakeKey])
            #expect(request.header("anthropic-version") == "2023-06-01")
            #expect(request.header("content-type") == "application/json")
            #expect(request.header("accept") == "text/event-stream")
            #expect(request.header("sluice-simulation") == #"{"seed":1}"#)
            #expect(request.header("anthropic-beta") == "test-beta")
            #expect(request.header("expect") == nil)
            #expect(await Self.eventually { client.openTransfers == 0 })
        }
    }

    @Test func sendsNoKeyWhenNoneIsConfigured() async throws {
        let recorder = Recorder()
        try await Self.withServer({ request, writer in
            recorder.record(request)
            try writer.head(status: 200, headers: Self.sseHead)
            for event in Self.textStream(["x"]) { try await writer.write(Array(event.utf8)) }
        }) { server in
            let client = try Self.client(server, apiKey: nil)
            let (_, failure) = await Self.collect(client.streamMessage(body: Self.requestBody, headers: []))
            #expect(failure == nil)
            #expect(recorder.last?.header("x-api-key") == nil)
        }
    }

    @Test func aCallersAnthropicVersionReplacesTheDefault() async throws {
        let recorder = Recorder()
        try await Self.withServer({ request, writer in
            recorder.record(request)
            try writer.head(status: 200, headers: Self.sseHead)
            for event in Self.textStream(["x"]) { try await writer.write(Array(event.utf8)) }
        }) { server in
            let client = try Self.client(server)
            let (_, failure) = await Self.collect(
                client.streamMessage(body: Self.requestBody, headers: [("anthropic-version", "2024-01-01")]))
            #expect(failure == nil)
            #expect(recorder.last?.headers.filter { $0.name == "anthropic-version" }.map(\.value) == ["2024-01-01"])
            let (_, refused) = await Self.collect(
                client.streamMessage(body: Self.requestBody, headers: [("anthropic-version", "2023\r\nx-evil: 1")]))
            #expect(refused?.message.contains("invalid anthropic-version") == true)
        }
    }

    @Test func eventsSplitAcrossArbitraryChunksAreReassembled() async throws {
        let whole = Array(Self.textStream(["a", "b", "c", "d"]).joined().utf8)
        try await Self.withServer({ _, writer in
            try writer.head(status: 200, headers: Self.sseHead)
            var index = 0
            var size = 1
            while index < whole.count {
                let end = min(whole.count, index + size)
                try await writer.write(whole[index..<end])
                index = end
                size = size % 13 + 1
            }
        }) { server in
            let client = try Self.client(server)
            let (events, failure) = await Self.collect(client.streamMessage(body: Self.requestBody, headers: []))
            #expect(failure == nil)
            var accumulator = MessageAccumulator()
            for event in events { accumulator.apply(event) }
            #expect(accumulator.message().content == [.text("abcd", citations: [])])
        }
    }

    /// Events several times libcurl's receive buffer (`CurlTransfer.receiveBufferBytes`), written at once, arrive whole
    /// and at once. (With a 4 KiB buffer, libcurl 7.88 stalled this stream until the idle timeout.)
    @Test func eventsLargerThanTheReceiveBufferArriveWhole() async throws {
        let chunks = (0..<3).map { index in String(repeating: "\(index)abcdefgh", count: 4 * CurlTransfer.receiveBufferBytes / 9) }
        let whole = Array(Self.textStream(chunks).joined().utf8)
        try await Self.withServer({ _, writer in
            try writer.head(status: 200, headers: Self.sseHead)
            try await writer.write(whole[...])
        }) { server in
            let client = try Self.client(server)
            let (events, failure) = await Self.collect(client.streamMessage(body: Self.requestBody, headers: []))
            #expect(failure == nil)
            #expect(Self.accumulate(events).message().content == [.text(chunks.joined(), citations: [])])
        }
    }

    @Test func malformedEventIsAnInvalidResponse() async throws {
        try await Self.withServer({ _, writer in
            try writer.head(status: 200, headers: Self.sseHead)
            try await writer.write(Array(Self.textStream([])[0].utf8))
            try await writer.write(Array("event: content_block_start\ndata: {not json\n\n".utf8))
            try? await Task.sleep(for: .seconds(5))
        }) { server in
            let client = try Self.client(server)
            let (events, failure) = await Self.collect(client.streamMessage(body: Self.requestBody, headers: []))
            #expect(events.count == 1)
            #expect(failure?.kind == .invalidResponse)
            #expect(failure?.retryable == false)
            #expect(failure?.requestID == "req_fixture")
            #expect(await Self.eventually { client.openTransfers == 0 })
        }
    }

    @Test func nonEventStreamSuccessIsAnInvalidResponse() async throws {
        try await Self.withServer({ _, writer in
            try writer.head(status: 200, headers: [("content-type", "application/json")])
            try await writer.write(Array(#"{"type":"message"}"#.utf8))
        }) { server in
            let client = try Self.client(server)
            let (_, failure) = await Self.collect(client.streamMessage(body: Self.requestBody, headers: []))
            #expect(failure?.kind == .invalidResponse)
        }
    }

    @Test func endOfStreamBeforeMessageStopIsRetryable() async throws {
        try await Self.withServer({ _, writer in
            try writer.head(status: 200, headers: Self.sseHead)
            for event in Self.textStream(["partial"]).prefix(4) { try await writer.write(Array(event.utf8)) }
        }) { server in
            let client = try Self.client(server)
            let (events, failure) = await Self.collect(client.streamMessage(body: Self.requestBody, headers: []))
            #expect(events.count == 4)
            #expect(failure?.kind == .streamEndedEarly)
            #expect(failure?.retryable == true)
            #expect(failure?.requestID == "req_fixture")
        }
    }

    @Test func streamResetIsAConnectionReset() async throws {
        try await Self.withServer({ _, writer in
            try writer.head(status: 200, headers: Self.sseHead)
            for event in Self.textStream(["partial"]).prefix(4) { try await writer.write(Array(event.utf8)) }
            throw HTTPStreamReset()
        }) { server in
            let client = try Self.client(server)
            let stream = client.streamMessage(body: Self.requestBody, headers: [])
            let (_, failure) = await Self.collect(stream)
            #expect(failure?.kind == .connectionReset)
            #expect(failure?.retryable == true)
            #expect(failure?.requestID == stream.requestID)  // the reset may overtake the queued head
        }
    }

    @Test func connectionRefusedIsAConnectionFailure() async throws {
        // A port that was just free: bind, read it, close.
        let port = try await Self.withServer({ _, _ in }) { server in server.port }
        let client = try UpstreamClient(
            configuration: UpstreamConfiguration(
                baseURL: "http://127.0.0.1:\(port)", apiKey: Self.plainFakeKey
            ))
        let (_, failure) = await Self.collect(client.streamMessage(body: Self.requestBody, headers: []))
        #expect(failure?.kind == .connectionFailed)
        #expect(failure?.retryable == true)
        #expect(failure.map { !"\($0)".contains(Self.plainFakeKey) } == true)
        #expect(client.openTransfers == 0)
        await client.shutdown()
    }

    @Test func slowConsumerIsAbortedAtTheBufferCap() async throws {
        let big = String(repeating: "x", count: 1000)
        try await Self.withServer({ _, writer in
            try writer.head(status: 200, headers: Self.sseHead)
            for event in Self.textStream(Array(repeating: big, count: 200)) { try await writer.write(Array(event.utf8)) }
        }) { server in
            let client = try Self.client(server) { $0.maxBufferedBytes = 32 << 10 }
            let stream = client.streamMessage(body: Self.requestBody, headers: [])
            var iterator = stream.makeAsyncIterator()
            _ = try await iterator.next()
            // Don't read: the multi thread fills the buffer and aborts the transfer.
            #expect(await Self.eventually { client.slowConsumerAborts == 1 })
            #expect(await Self.eventually { client.openTransfers == 0 })
            var received = 1
            do throws(UpstreamFailure) {
                while try await iterator.next() != nil { received += 1 }
                Issue.record("expected a failure")
            } catch {
                #expect(error.kind == .streamEndedEarly)
                #expect(error.retryable)
                #expect(error.message.contains("consumer too slow"))
            }
            // What was buffered before the abort is still delivered, up to about the cap.
            #expect(received > 10 && received < 60)
        }
    }

    @Test func droppingTheStreamAbortsTheTransfer() async throws {
        let reset = LockedValue(false)
        try await Self.withServer({ _, writer in
            try writer.head(status: 200, headers: Self.sseHead)
            do {
                for event in Self.textStream(["a"]).prefix(3) { try await writer.write(Array(event.utf8)) }
                while true {
                    try await Task.sleep(for: .milliseconds(20))
                    try await writer.write(Array(Self.sse("ping", #"{"type":"ping"}"#).utf8))
                }
            } catch {
                reset.withLock { $0 = true }
                throw error
            }
        }) { server in
            let client = try Self.client(server)
            do {
                let stream = client.streamMessage(body: Self.requestBody, headers: [])
                for try await event in stream {
                    if case .contentBlockStart = event { break }
                }
            }
            #expect(await Self.eventually { client.openTransfers == 0 })
            #expect(await Self.eventually { reset.withLock { $0 } })
        }
    }

    @Test func cancellingTheConsumingTaskAbortsTheTransfer() async throws {
        try await Self.withServer({ _, writer in
            try writer.head(status: 200, headers: Self.sseHead)
            try await writer.write(Array(Self.textStream([])[0].utf8))
            try await Task.sleep(for: .seconds(30))
        }) { server in
            let client = try Self.client(server)
            let task = Task {
                await Self.collect(client.streamMessage(body: Self.requestBody, headers: [])).failure
            }
            #expect(await Self.eventually { client.openTransfers == 1 })
            task.cancel()
            let failure = await task.value
            #expect(failure?.kind == .cancelled)
            #expect(failure?.retryable == false)
            #expect(await Self.eventually { client.openTransfers == 0 })
        }
    }

    @Test func shutdownFailsOpenAndLaterStreams() async throws {
        try await Self.withServer({ _, writer in
            try writer.head(status: 200, headers: Self.sseHead)
            try await Task.sleep(for: .seconds(30))
        }) { server in
            let client = try Self.client(server)
            let stream = client.streamMessage(body: Self.requestBody, headers: [])
            #expect(await Self.eventually { client.openTransfers == 1 })
            await client.shutdown()
            #expect(client.openTransfers == 0)
            #expect(await Self.collect(stream).failure?.kind == .cancelled)
            #expect(await Self.collect(client.streamMessage(body: Self.requestBody, headers: [])).failure?.kind == .cancelled)
        }
    }

    @Test func droppingTheClientWithoutShutdownAbortsItsTransfers() async throws {
        try await Self.withSimulator { server, simulator in
            var client: UpstreamClient? = try UpstreamClient(
                configuration: UpstreamConfiguration(
                    baseURL: "http://127.0.0.1:\(server.port)", apiKey: Self.fakeKey
                ))
            let stream = try #require(client).streamMessage(
                body: Self.simulatorBody(), headers: [("sluice-simulation", #"{"output_tokens":2000,"token_interval_ms":10}"#)]
            )
            #expect(await Self.eventually { client?.openTransfers == 1 })
            client = nil  // its deinit hands the shutdown to the loop without waiting
            #expect(await Self.collect(stream).failure?.kind == .cancelled)
            #expect(await Self.eventually { simulator.activeStreams == 0 })
        }
    }

    // MARK: Configuration

    @Test func configurationRedactsTheKey() throws {
        let configuration = UpstreamConfiguration(apiKey: Self.plainFakeKey)
        #expect(!configuration.description.contains(Self.plainFakeKey))
        #expect(!configuration.debugDescription.contains(Self.plainFakeKey))
        #expect(!"\(configuration)".contains(Self.plainFakeKey))
        #expect(!String(reflecting: configuration).contains(Self.plainFakeKey))
        #expect(configuration.description.contains("<redacted>"))
        #expect(configuration.baseURL == "https://api.anthropic.com")
        #expect(configuration.connectTimeout == .seconds(10))
        #expect(configuration.firstByteTimeout == .seconds(60))
        #expect(configuration.idleTimeout == .seconds(30))
    }

    @Test func rejectsUnsupportedBaseURLs() {
        #expect(throws: UpstreamConfigurationError.self) {
            try UpstreamClient(configuration: UpstreamConfiguration(baseURL: "ftp://example.com"))
        }
    }

    @Test func loadsTheKeyFromTheEnvironmentOrAFile() throws {
        #expect(try UpstreamConfiguration.loadAPIKey(environment: ["ANTHROPIC_API_KEY": "  key-env \n"]) == "key-env")
        #expect(try UpstreamConfiguration.loadAPIKey(environment: ["ANTHROPIC_API_KEY": " \n"]) == nil)
        #expect(try UpstreamConfiguration.loadAPIKey(environment: [:]) == nil)

        let path = "/tmp/sluice-upstream-key-\(getpid())"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        try #require(fd >= 0)
        _ = Array("\n key-file\t\n".utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        defer { unlink(path) }
        #expect(try UpstreamConfiguration.loadAPIKey(environment: ["ANTHROPIC_API_KEY": "key-env"], keyFile: path) == "key-file")
        do {
            _ = try UpstreamConfiguration.loadAPIKey(environment: [:], keyFile: path + ".missing")
            Issue.record("expected an error")
        } catch {
            #expect(error.description.contains(".missing"))
        }
    }
}

/// A self-signed certificate for `localhost`, made once per test run with the openssl CLI.
final class TestCertificate: Sendable {
    static let shared = TestCertificate()
    private let files = LockedValue<Result<(certificate: String, key: String), any Error>?>(nil)

    func get() throws -> (certificate: String, key: String) {
        try files.withLock { files in
            if let files { return try files.get() }
            let result = Result { try Self.make() }
            files = result
            return try result.get()
        }
    }

    private static func make() throws -> (certificate: String, key: String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-upstream-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let certificate = directory.appendingPathComponent("cert.pem").path
        let key = directory.appendingPathComponent("key.pem").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", certificate, "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ]
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw UpstreamConfigurationError.invalid("openssl req failed") }
        return (certificate, key)
    }
}

// MARK: - Against the Anthropic simulator

extension UpstreamClientTests {
    static func withSimulator<T>(
        tls: Bool = false, _ body: (HTTP2Server, AnthropicSimulator) async throws -> T
    ) async throws -> T {
        let simulator = AnthropicSimulator()
        var router = RPCRouter()
        simulator.register(in: &router)
        return try await withServer(router: router, tls: tls) { server in try await body(server, simulator) }
    }

    static func simulatorBody(_ question: String = "Tell me about rivers.", maxTokens: Int = 1024) -> [UInt8] {
        JSONValue.object([
            "model": "claude-sim-1", "max_tokens": .integer(maxTokens), "stream": true,
            "messages": [["role": "user", "content": .string(question)]],
        ]).serialized()
    }

    /// What the simulator answers to the same request without streaming (its non-streaming response body).
    static func expectedMessage(body: [UInt8], scenario: String) throws -> JSONValue {
        let message = SimulatedMessage(
            request: try MessagesRequest.parse(body), scenario: try SimulationScenario(header: scenario)
        )
        return try JSONValue(parsing: message.messageJSON.serialized())
    }

    static func accumulate(_ events: [AnthropicEvent]) -> MessageAccumulator {
        var accumulator = MessageAccumulator()
        for event in events { accumulator.apply(event) }
        return accumulator
    }

    @Test(arguments: [
        #"{"seed":7,"output_tokens":40}"#,
        #"{"seed":8,"output_tokens":30,"tool_calls":[{"name":"get_weather","input":{"city":"Paris","days":[1,2]}}]}"#,
    ])
    func simulatorStreamMatchesTheNonStreamedMessage(_ scenario: String) async throws {
        try await Self.withSimulator { server, simulator in
            let client = try Self.client(server)
            let body = Self.simulatorBody()
            let stream = client.streamMessage(body: body, headers: [("sluice-simulation", scenario)])
            let (events, failure) = await Self.collect(stream)
            #expect(failure == nil)
            let accumulator = Self.accumulate(events)
            #expect(accumulator.isComplete)
            #expect(accumulator.jsonValue == (try Self.expectedMessage(body: body, scenario: scenario)))
            #expect(stream.requestID?.hasPrefix("req_") == true)
            #expect(await Self.eventually { client.openTransfers == 0 && simulator.activeStreams == 0 })
            #expect(simulator.abortedStreams == 0)
        }
    }

    struct FaultCase: Sendable, CustomTestStringConvertible {
        var scenario: String
        var kind: UpstreamFailure.Kind
        var retryable: Bool
        var status: Int? = nil
        var errorType: String? = nil
        var retryAfter: Duration? = nil
        var testDescription: String { scenario }
    }

    @Test(arguments: [
        FaultCase(scenario: #"{"fault":{"kind":"drop","after_events":5}}"#, kind: .connectionReset, retryable: true),
        FaultCase(
            scenario: #"{"fault":{"kind":"error_event","after_events":5}}"#, kind: .errorEvent, retryable: true,
            errorType: "overloaded_error"
        ),
        FaultCase(
            scenario: #"{"fault":{"kind":"error_event","after_events":3,"error_type":"invalid_request_error"}}"#,
            kind: .errorEvent, retryable: false, errorType: "invalid_request_error"
        ),
        FaultCase(
            scenario: #"{"fault":{"kind":"http_status","status":429,"retry_after_s":7}}"#, kind: .httpStatus,
            retryable: true, status: 429, errorType: "rate_limit_error", retryAfter: .seconds(7)
        ),
        FaultCase(
            scenario: #"{"fault":{"kind":"http_status","status":529}}"#, kind: .httpStatus, retryable: true,
            status: 529, errorType: "overloaded_error"
        ),
        FaultCase(
            scenario: #"{"fault":{"kind":"http_status","status":500}}"#, kind: .httpStatus, retryable: true,
            status: 500, errorType: "api_error"
        ),
        FaultCase(
            scenario: #"{"fault":{"kind":"http_status","status":400}}"#, kind: .httpStatus, retryable: false,
            status: 400, errorType: "invalid_request_error"
        ),
        FaultCase(
            scenario: #"{"fault":{"kind":"http_status","status":401}}"#, kind: .httpStatus, retryable: false,
            status: 401, errorType: "authentication_error"
        ),
        FaultCase(
            scenario: #"{"token_interval_ms":5,"fault":{"kind":"stall","after_events":6}}"#, kind: .idleTimeout,
            retryable: true
        ),
    ])
    func simulatorFaultsAreClassified(_ fault: FaultCase) async throws {
        for key in [Self.fakeKey, Self.plainFakeKey] {
            try await Self.withSimulator { server, simulator in
                let client = try Self.client(server, apiKey: key) { $0.idleTimeout = .milliseconds(300) }
                let stream = client.streamMessage(body: Self.simulatorBody(), headers: [("sluice-simulation", fault.scenario)])
                let (_, caught) = await Self.collect(stream)
                let failure = try #require(caught)
                #expect(failure.kind == fault.kind)
                #expect(failure.retryable == fault.retryable)
                #expect(failure.httpStatus == fault.status)
                #expect(failure.errorType == fault.errorType)
                #expect(failure.retryAfter == fault.retryAfter)
                #expect(failure.requestID == stream.requestID)
                // A drop resets the stream at once, possibly before the queued response head was written.
                if fault.kind != .connectionReset { #expect(failure.requestID?.hasPrefix("req_") == true) }
                for text in [failure.description, failure.message, "\(failure)", String(reflecting: failure)] {
                    #expect(!text.contains(key), "the API key leaked into \(text)")
                    #expect(!text.contains("SLUICETESTKEY") && !text.contains("PLAINFAKEKEY"))
                }
                #expect(await Self.eventually { client.openTransfers == 0 && simulator.activeStreams == 0 })
            }
        }
    }

    @Test func firstTokenDelayBeyondTheFirstByteTimeout() async throws {
        try await Self.withSimulator { server, simulator in
            let client = try Self.client(server) {
                $0.firstByteTimeout = .milliseconds(300)
                $0.idleTimeout = .milliseconds(100)  // must not apply before the first output
            }
            let started = ContinuousClock.now
            let (events, failure) = await Self.collect(
                client.streamMessage(
                    body: Self.simulatorBody(),
                    headers: [("sluice-simulation", #"{"first_token_delay_ms":5000,"ping_interval_ms":50}"#)]
                ))
            #expect(failure?.kind == .firstByteTimeout)
            #expect(failure?.retryable == true)
            #expect(failure?.requestID?.hasPrefix("req_") == true)
            #expect(ContinuousClock.now - started < .seconds(3))
            #expect(events.first.map { if case .messageStart = $0 { true } else { false } } == true)
            #expect(await Self.eventually { client.openTransfers == 0 && simulator.activeStreams == 0 })
            #expect(simulator.abortedStreams == 1)

            // A delay within the timeout is fine.
            let (_, ok) = await Self.collect(
                client.streamMessage(
                    body: Self.simulatorBody(), headers: [("sluice-simulation", #"{"first_token_delay_ms":100}"#)]
                ))
            #expect(ok == nil)
        }
    }

    @Test func pingsAloneDoNotKeepAStalledStreamAlive() async throws {
        try await Self.withSimulator { server, simulator in
            let client = try Self.client(server) { $0.idleTimeout = .milliseconds(400) }
            let started = ContinuousClock.now
            let scenario = #"{"ping_interval_ms":30,"token_interval_ms":5,"fault":{"kind":"stall","after_events":6,"keep_alive":true}}"#
            let (events, failure) = await Self.collect(
                client.streamMessage(
                    body: Self.simulatorBody(), headers: [("sluice-simulation", scenario)]
                ))
            #expect(failure?.kind == .idleTimeout)
            #expect(failure?.retryable == true)
            #expect(ContinuousClock.now - started < .seconds(3))
            // Pings did arrive during the stall: the timeout is per event, not per byte.
            let lastContent = events.lastIndex { if case .ping = $0 { false } else { true } } ?? 0
            #expect(events[lastContent...].filter { $0 == .ping }.count >= 5)
            #expect(await Self.eventually { client.openTransfers == 0 && simulator.activeStreams == 0 })
            #expect(simulator.abortedStreams == 1)
        }
    }

    @Test(arguments: [false, true])
    func cancellingMidStreamFreesTheTransferAndResetsTheStream(tls: Bool) async throws {
        try await Self.withSimulator(tls: tls) { server, simulator in
            let client = try Self.client(server)
            let scenario = #"{"output_tokens":2000,"token_interval_ms":10}"#
            do {
                var received = 0
                for try await _ in client.streamMessage(body: Self.simulatorBody(), headers: [("sluice-simulation", scenario)]) {
                    received += 1
                    if received == 8 { break }
                }
            }
            #expect(await Self.eventually { client.openTransfers == 0 })
            #expect(await Self.eventually { simulator.abortedStreams == 1 && simulator.activeStreams == 0 })

            // The client (and, over TLS, its shared connection) still works afterwards.
            let (_, failure) = await Self.collect(
                client.streamMessage(
                    body: Self.simulatorBody(), headers: [("sluice-simulation", #"{"output_tokens":10}"#)]
                ))
            #expect(failure == nil)
        }
    }

    /// 200 concurrent streams over TLS (ALPN h2), multiplexed on shared connections; a quarter of them (long ones)
    /// cancelled early, which must not disturb the others.
    @Test func concurrentStreamsMultiplexed() async throws {
        try await Self.withSimulator(tls: true) { server, simulator in
            let client = try Self.client(server)
            let count = 200
            let results = await withTaskGroup(of: (Int, Bool, UpstreamFailure?).self) { group in
                for index in 0..<count {
                    group.addTask {
                        let cancelled = index % 4 == 3
                        let scenario =
                            cancelled
                            ? #"{"seed":\#(index),"output_tokens":3000,"token_interval_ms":5}"#
                            : #"{"seed":\#(index),"output_tokens":30,"token_interval_ms":5}"#
                        let body = Self.simulatorBody("Question \(index)")
                        let stream = client.streamMessage(body: body, headers: [("sluice-simulation", scenario)])
                        if cancelled {
                            var received = 0
                            do {
                                for try await _ in stream {
                                    received += 1
                                    if received == 10 { break }
                                }
                            } catch {
                                return (index, false, error as? UpstreamFailure)
                            }
                            return (index, received == 10, nil)
                        }
                        let (events, failure) = await Self.collect(stream)
                        let expected = try? Self.expectedMessage(body: body, scenario: scenario)
                        return (index, Self.accumulate(events).jsonValue == expected, failure)
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            #expect(results.count == count)
            for (index, ok, failure) in results {
                #expect(ok && failure == nil, "stream \(index): \(failure.map { "\($0)" } ?? "wrong message")")
            }
            #expect(await Self.eventually { client.openTransfers == 0 })
            // Cancelled streams are reset at the server: at once while other streams share the connection
            // (their traffic carries the RST_STREAM), at the latest when the client closes its connections.
            await client.shutdown()
            #expect(await Self.eventually { simulator.activeStreams == 0 })
            #expect(simulator.abortedStreams == count / 4)
        }
    }

    /// Request bodies several times libcurl's upload buffer, on streams sharing TLS connections: each body is sent
    /// whole (the answer is the one for that body), and the upload buffer is freed once it is, while the answer
    /// still streams.
    @Test func largeBodiesAreSentWholeAndTheirUploadBufferFreed() async throws {
        try await Self.withSimulator(tls: true) { server, _ in
            let client = try Self.client(server)
            let results = await withTaskGroup(of: (Bool, Bool, UpstreamFailure?).self) { group in
                for index in 0..<8 {
                    group.addTask {
                        let question = "Question \(index): " + String(repeating: "river \(index) ", count: 12_000)
                        let body = Self.simulatorBody(question)
                        let scenario = #"{"seed":\#(index),"output_tokens":30,"token_interval_ms":5}"#
                        let stream = client.streamMessage(body: body, headers: [("sluice-simulation", scenario)])
                        let (events, failure) = await Self.collect(stream)
                        let expected = try? Self.expectedMessage(body: body, scenario: scenario)
                        return (Self.accumulate(events).jsonValue == expected, stream.handle.transfer.uploadBufferReleased, failure)
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            #expect(results.count == 8)
            for (matches, released, failure) in results {
                #expect(matches && failure == nil, "\(failure.map { "\($0)" } ?? "wrong message")")
                #expect(released)
            }
        }
    }

    @Test func tlsVerificationIsOn() async throws {
        try await Self.withSimulator(tls: true) { server, _ in
            // No CA bundle for the self-signed certificate: the handshake must fail, not fall back.
            let client = try UpstreamClient(
                configuration: UpstreamConfiguration(
                    baseURL: "https://localhost:\(server.port)", apiKey: Self.plainFakeKey, caBundlePath: "/dev/null"
                ))
            let (_, failure) = await Self.collect(client.streamMessage(body: Self.simulatorBody(), headers: []))
            #expect(failure?.kind == .connectionFailed)
            #expect(failure?.retryable == false)
            #expect(failure.map { !"\($0)".contains(Self.plainFakeKey) } == true)
            await client.shutdown()
        }
    }
}

// MARK: - Buffered calls (`post`)

extension UpstreamClientTests {
    static let countTokensPath = "/v1/messages/count_tokens"

    static func withCountTokensServer<T>(
        _ handler: @escaping HTTPHandler, _ body: (HTTP2Server) async throws -> T
    ) async throws -> T {
        var router = RPCRouter()
        router.registerHTTP(countTokensPath, handler)
        return try await withServer(router: router, body)
    }

    @Test func postSendsTheBodyToThePathAndReturnsTheWholeResponse() async throws {
        let recorder = Recorder()
        try await Self.withCountTokensServer({ request, writer in
            recorder.record(request)
            try writer.head(status: 200, headers: [("content-type", "application/json"), ("request-id", "req_count")])
            try await writer.write(Array(#"{"input_tokens":"#.utf8))
            try await writer.write(Array("12}".utf8))
        }) { server in
            let client = try Self.client(server)
            let body = Array(#"{"model":"claude-test","messages":[]}"#.utf8)
            let response = try await client.post(
                path: Self.countTokensPath, body: body,
                headers: [("x-api-key", "caller-must-not-override"), ("anthropic-beta", "test-beta")])
            #expect(response.status == 200)
            #expect(response.body == Array(#"{"input_tokens":12}"#.utf8))
            #expect(response.header("request-id") == "req_count")
            let request = try #require(recorder.last)
            #expect(request.method == "POST")
            #expect(request.path == Self.countTokensPath)
            #expect(request.body == body)
            #expect(request.headers.filter { $0.name == "x-api-key" }.map(\.value) == [Self.fakeKey])
            #expect(request.header("accept") == "application/json")
            #expect(request.header("anthropic-beta") == "test-beta")
            #expect(await Self.eventually { client.openTransfers == 0 })
        }
    }

    @Test func postReturnsAnErrorStatusAsAResponse() async throws {
        let error = #"{"type":"error","error":{"type":"invalid_request_error","message":"model: Field required"}}"#
        try await Self.withCountTokensServer({ _, writer in
            try writer.head(status: 400, headers: [("content-type", "application/json")])
            try await writer.write(Array(error.utf8))
        }) { server in
            let response = try await Self.client(server).post(path: Self.countTokensPath, body: Array("{}".utf8))
            #expect(response.status == 400)
            #expect(response.body == Array(error.utf8))
        }
    }

    @Test func postOfABodyOverTheBufferCapFails() async throws {
        try await Self.withCountTokensServer({ _, writer in
            try writer.head(status: 200, headers: [("content-type", "application/json")])
            try await writer.write([UInt8](repeating: UInt8(ascii: " "), count: 4096))
        }) { server in
            let client = try Self.client(server) { $0.maxBufferedBytes = 1024 }
            await #expect(throws: UpstreamFailure.self) {
                _ = try await client.post(path: Self.countTokensPath, body: Array("{}".utf8))
            }
            #expect(await Self.eventually { client.openTransfers == 0 })
        }
    }

    @Test func postToAClosedPortIsAConnectionFailure() async throws {
        let port = try await Self.withServer({ _, _ in }) { server in server.port }
        let client = try UpstreamClient(
            configuration: UpstreamConfiguration(baseURL: "http://127.0.0.1:\(port)", apiKey: Self.plainFakeKey))
        do {
            _ = try await client.post(path: Self.countTokensPath, body: Array("{}".utf8))
            Issue.record("a post to a closed port returned a response")
        } catch {
            #expect(error.kind == .connectionFailed)
        }
        #expect(client.openTransfers == 0)
        await client.shutdown()
    }

    @Test func simulatorCountsTheInputTokensAMessageReports() async throws {
        try await Self.withSimulator { server, _ in
            let client = try Self.client(server)
            let system: JSONValue = "Be brief."
            let messages: JSONValue = [["role": "user", "content": "Tell me about rivers and the seas they reach."]]
            let countBody = JSONValue.object(["model": "claude-sim-1", "system": system, "messages": messages]).serialized()
            let response = try await client.post(path: Self.countTokensPath, body: countBody)
            #expect(response.status == 200)
            // The same body as a message (with max_tokens): its usage.input_tokens.
            let messageBody = JSONValue.object([
                "model": "claude-sim-1", "max_tokens": 64, "system": system, "messages": messages,
            ]).serialized()
            let message = SimulatedMessage(request: try MessagesRequest.parse(messageBody), scenario: SimulationScenario())
            #expect(try JSONValue(parsing: response.body) == ["input_tokens": .integer(message.inputTokens)])

            let invalid = try await client.post(path: Self.countTokensPath, body: Array(#"{"messages":[]}"#.utf8))
            #expect(invalid.status == 400)
            #expect(try JSONValue(parsing: invalid.body)["error"]?["type"] == "invalid_request_error")
        }
    }
}
