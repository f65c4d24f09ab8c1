import Foundation
import Glibc

/// A `redis-server` of the test's own, on a free port in a temporary directory; `stop` kills it (as a crash would),
/// `start` brings it
/// back on the same port. Readiness is its "Ready to accept connections" log line.
final class RedisTestServer: @unchecked Sendable {
    let port: Int
    let directory: URL
    private var process: Process?
    /// Every write is on disk before Redis replies (`appendfsync always`): a kill loses nothing.
    let persistent: Bool

    init(persistent: Bool = false) throws {
        self.persistent = persistent
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        port = try Self.freePort()
        try start()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(at: directory)
    }

    var url: String { "redis://127.0.0.1:\(port)" }

    func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/redis-server")
        process.arguments =
            [
                "--port", "\(port)", "--bind", "127.0.0.1", "--dir", directory.path, "--save", "",
            ] + (persistent ? ["--appendonly", "yes", "--appendfsync", "always"] : ["--appendonly", "no"])
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        self.process = process
        var seen = Data()
        while !String(decoding: seen, as: UTF8.self).contains("Ready to accept connections") {
            let chunk = output.fileHandleForReading.availableData
            guard !chunk.isEmpty else {
                throw RedisTestError.failedToStart(String(decoding: seen, as: UTF8.self))
            }
            seen += chunk
        }
        // Keep draining its output so it never blocks on a full pipe.
        output.fileHandleForReading.readabilityHandler = { _ = $0.availableData }
    }

    func stop() {
        guard let process else { return }
        // SIGKILL: a child spawned from a test thread inherits its blocked signals, SIGTERM among them.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    /// Runs `redis-cli` with `arguments`; returns its output.
    func cli(_ arguments: String...) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/redis-cli")
        process.arguments = ["-p", "\(port)"] + arguments
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw RedisTestError.noFreePort }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

enum RedisTestError: Error {
    case noFreePort
    case failedToStart(String)
}
