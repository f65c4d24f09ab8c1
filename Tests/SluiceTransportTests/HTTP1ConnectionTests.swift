import Glibc
import Logging
import SluiceIO
import Synchronization
import Testing

@testable import SluiceTransport

@Suite struct HTTP1ConnectionTests {
    /// A blocking loopback TCP client, for bytes no HTTP client library would send or withhold.
    /// Its reads run through `onOwnThread`.
    final class RawClient: @unchecked Sendable {
        let fd: Int32

        init(port: Int, receiveBuffer: Int32? = nil) throws {
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            if var size = receiveBuffer {
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            }
            var timeout = timeval(tv_sec: 10, tv_usec: 0)  // a safety net against hangs
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = UInt16(port).bigEndian
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let rv = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard rv == 0 else { throw IOError.system("connect", errno) }
        }

        deinit { close(fd) }

        func send(_ text: String) {
            _ = text.withCString { Glibc.send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        }

        /// Everything until the server closes the connection.
        func readUntilClosed() -> [UInt8] {
            var received: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 64 * 1024)
            while true {
                let count = recv(fd, &buffer, buffer.count, 0)
                if count <= 0 { return received }
                received += buffer[0..<count]
            }
        }

        /// Reads until the terminating chunk (the connection stays open for keep-alive).
        func readThroughLastChunk() -> [UInt8] {
            var received: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 256 * 1024)
            let terminator = Array("\r\n0\r\n\r\n".utf8)
            while received.count < terminator.count || Array(received.suffix(terminator.count)) != terminator {
                let count = recv(fd, &buffer, buffer.count, 0)
                if count <= 0 { break }
                received += buffer[0..<count]
            }
            return received
        }
    }

    private func withServer(routes: (inout RPCRouter) -> Void, _ body: (Int) async throws -> Void) async throws {
        var router = RPCRouter()
        routes(&router)
        var configuration = HTTP2ServerConfiguration()
        configuration.port = 0
        configuration.eventLoops = 1
        let server = try HTTP2Server(configuration: configuration, router: router, logger: Logger(label: "test.server"))
        try server.start()
        do {
            try await body(server.port)
        } catch {
            await server.shutdown(drainTimeout: .zero)
            throw error
        }
        await server.shutdown(drainTimeout: .zero)
    }

    /// Splits a chunked body into its chunks' data; nil if it lacks the terminating chunk.
    private func dechunk(_ bytes: ArraySlice<UInt8>) -> [UInt8]? {
        var body: [UInt8] = []
        var index = bytes.startIndex
        while let lineEnd = bytes[index...].firstIndex(of: 13) {
            guard let size = Int(String(decoding: bytes[index..<lineEnd], as: UTF8.self), radix: 16) else { return nil }
            if size == 0 { return body }
            let start = lineEnd + 2
            guard start + size + 2 <= bytes.endIndex else { return nil }
            body += bytes[start..<start + size]
            index = start + size + 2
        }
        return nil
    }

    @Test func aClientThatStopsReadingSuspendsTheHandler() async throws {
        let total = 64 << 20
        let piece = [UInt8](repeating: UInt8(ascii: "x"), count: 64 * 1024)
        let written = Atomic<Int>(0)
        try await withServer(routes: { router in
            router.registerHTTP("/firehose") { _, writer in
                try writer.head(status: 200, headers: [("content-type", "application/octet-stream")])
                while written.load(ordering: .relaxed) < total {
                    try await writer.write(piece)
                    written.add(piece.count, ordering: .relaxed)
                }
            }
        }) { port in
            let client = try RawClient(port: port, receiveBuffer: 4096)
            client.send("GET /firehose HTTP/1.1\r\nHost: test\r\n\r\n")
            // An observation window, not a synchronisation: without backpressure the handler
            // writes all 64 MiB in a fraction of this.
            try await Task.sleep(for: .seconds(1))
            let stalledAt = written.load(ordering: .relaxed)
            #expect(stalledAt > 0)
            #expect(stalledAt < 16 << 20, "the handler wrote \(stalledAt) bytes to a client that read none")

            let response = await onOwnThread { client.readThroughLastChunk() }
            let headEnd = try #require(response.firstRange(of: Array("\r\n\r\n".utf8)))
            let head = String(decoding: response[..<headEnd.lowerBound], as: UTF8.self)
            #expect(head.hasPrefix("HTTP/1.1 200 OK\r\n"))
            #expect(head.contains("transfer-encoding: chunked"))
            let body = try #require(dechunk(response[headEnd.upperBound...]))
            #expect(body.count == total)
        }
    }

    @Test func headOfAStreamedResponseHasNoBodyAndTheConnectionGoesOn() async throws {
        // Pieces larger than the read scratch and the queue: the loop must keep draining what a
        // HEAD response drops, or the handler would wait for room forever.
        let piece = [UInt8](repeating: UInt8(ascii: "x"), count: 100_000)
        try await withServer(routes: { router in
            router.registerHTTP("/pieces") { _, writer in
                try writer.head(status: 200, headers: [("content-type", "application/octet-stream")])
                for _ in 1...5 {
                    try await writer.write(piece)
                    // Pauses between pieces, as a live stream has: its head goes out before its end.
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
        }) { port in
            let client = try RawClient(port: port)
            client.send("HEAD /pieces HTTP/1.1\r\nHost: test\r\n\r\nGET /pieces HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            let received = String(decoding: await onOwnThread { client.readUntilClosed() }, as: UTF8.self)
            let responses = received.split(separator: "HTTP/1.1 200 OK\r\n", omittingEmptySubsequences: false)
            try #require(responses.count == 3, "two responses: \(received.prefix(500))")
            #expect(
                responses[1].hasSuffix("\r\n\r\n") && !responses[1].contains("xx"),
                "the HEAD response is its head only: \(responses[1].prefix(500))")
            #expect(responses[2].contains("connection: close\r\n"))
            #expect(responses[2].hasSuffix("\r\n0\r\n\r\n"))
            #expect(responses[2].filter { $0 == "x" }.count == 5 * piece.count)
        }
    }

    struct Failure: Error {}

    @Test func handlerFailuresShowAsA500OrATruncatedResponse() async throws {
        try await withServer(routes: { router in
            router.registerHTTP("/fails") { _, _ in throw Failure() }
            router.registerHTTP("/fails-late") { _, writer in
                try writer.head(status: 200)
                try await writer.write(Array("partial".utf8))
                throw Failure()
            }
        }) { port in
            let early = try RawClient(port: port)
            early.send("GET /fails HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            let page = String(decoding: await onOwnThread { early.readUntilClosed() }, as: UTF8.self)
            #expect(page.hasPrefix("HTTP/1.1 500 Internal Server Error\r\n"))
            #expect(page.contains("internal error: Failure()\n"))
            // Complete, whichever framing the timing chose.
            #expect(page.hasSuffix("\r\n0\r\n\r\n") || page.contains("content-length: 26\r\n"), "\(page)")

            let late = try RawClient(port: port)
            late.send("GET /fails-late HTTP/1.1\r\nHost: test\r\n\r\n")
            let cut = String(decoding: await onOwnThread { late.readUntilClosed() }, as: UTF8.self)
            // Closed without a complete message: no terminating chunk, no length that pretends.
            #expect(!cut.contains("\r\n0\r\n\r\n") && !cut.contains("content-length"), "\(cut)")
        }
    }
}

/// Runs `body` on a thread of its own: blocking socket reads must stay off Swift's cooperative
/// pool, which the server's handlers need in order to produce what is being read.
private func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let work = Unmanaged.passRetained(Work { continuation.resume(returning: body()) })
        var thread = pthread_t()
        let result = pthread_create(
            &thread, nil,
            { raw in
                Unmanaged<Work>.fromOpaque(raw!).takeRetainedValue().run()
                return nil
            }, work.toOpaque())
        precondition(result == 0, "pthread_create failed: \(result)")
        pthread_detach(thread)
    }
}

private final class Work: @unchecked Sendable {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}
