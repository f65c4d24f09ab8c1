// grpc-swift-2 peer for the transport benchmark: serves `sluice.v1.Synthetic/Stream` with the
// same request/response JSON shape as Sources/SluiceService/SyntheticService.swift, using
// RPCRouter + RegistrableRPCService and Codable JSON (de)serializers. No protobuf, no codegen.
//
// Usage: GRPCSwiftPeer <port> [host]   (port 0 picks a free one)
// Prints "grpc-swift-2 peer listening on <address>" once bound.
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix

struct StreamRequest: Codable, Sendable {
    var frames: Int?
    var size: Int?
    var intervalMilliseconds: Int?

    enum CodingKeys: String, CodingKey {
        case frames, size
        case intervalMilliseconds = "interval_ms"
    }
}

struct StreamFrame: Codable, Sendable {
    var seq: Int
    var type: String
    var delta: String
}

// One encoder/decoder per serializer, shared by every call (Foundation's JSONEncoder/JSONDecoder
// are Sendable and safe to use concurrently once configured).
struct JSONSerializer<Message: Encodable & Sendable>: MessageSerializer {
    private let encoder = JSONEncoder()

    func serialize<Bytes: GRPCContiguousBytes>(_ message: Message) throws -> Bytes {
        let data = try encoder.encode(message)
        return Bytes(data)
    }
}

struct JSONDeserializer<Message: Decodable & Sendable>: MessageDeserializer {
    private let decoder = JSONDecoder()

    func deserialize<Bytes: GRPCContiguousBytes>(_ serializedMessageBytes: Bytes) throws -> Message {
        try serializedMessageBytes.withUnsafeBytes { buffer in
            try decoder.decode(Message.self, from: Data(buffer))
        }
    }
}

struct SyntheticService: RegistrableRPCService {
    static let stream = MethodDescriptor(fullyQualifiedService: "sluice.v1.Synthetic", method: "Stream")
    static let maxFrames = 1_000_000
    static let maxFrameSize = 1 << 20
    static let maxIntervalMilliseconds = 60_000

    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        router.registerHandler(
            forMethod: Self.stream,
            deserializer: JSONDeserializer<StreamRequest>(),
            serializer: JSONSerializer<StreamFrame>()
        ) { request, _ in
            // Server streaming: exactly one request message.
            var messages = request.messages.makeAsyncIterator()
            guard let parsed = try await messages.next() else {
                throw RPCError(code: .invalidArgument, message: "missing request message")
            }
            let frames = parsed.frames ?? 1
            let size = parsed.size ?? 16
            let interval = parsed.intervalMilliseconds ?? 0
            guard (0...Self.maxFrames).contains(frames) else {
                throw RPCError(code: .invalidArgument, message: "frames must be between 0 and \(Self.maxFrames), got \(frames)")
            }
            guard (0...Self.maxFrameSize).contains(size) else {
                throw RPCError(code: .invalidArgument, message: "size must be between 0 and \(Self.maxFrameSize) bytes, got \(size)")
            }
            guard (0...Self.maxIntervalMilliseconds).contains(interval) else {
                throw RPCError(
                    code: .invalidArgument, message: "interval_ms must be between 0 and \(Self.maxIntervalMilliseconds), got \(interval)")
            }
            let delta = String(decoding: (0..<size).map { UInt8(ascii: "a") + UInt8($0 % 26) }, as: UTF8.self)
            return StreamingServerResponse(of: StreamFrame.self) { writer in
                for seq in stride(from: 1, through: frames, by: 1) {
                    if interval > 0 && seq > 1 { try await Task.sleep(for: .milliseconds(interval)) }
                    try await writer.write(StreamFrame(seq: seq, type: "message_delta", delta: delta))
                }
                return [:]
            }
        }
    }
}

let arguments = CommandLine.arguments
guard arguments.count >= 2, let port = Int(arguments[1]), (0...65535).contains(port) else {
    FileHandle.standardError.write(Data("usage: GRPCSwiftPeer <port> [host]\n".utf8))
    exit(2)
}
let host = arguments.count >= 3 ? arguments[2] : "127.0.0.1"

// Defaults throughout: the transport runs on MultiThreadedEventLoopGroup.singleton
// (System.coreCount threads); handlers run on Swift concurrency's global executor.
let server = GRPCServer(
    transport: .http2NIOPosix(
        address: .ipv4(host: host, port: port),
        transportSecurity: .plaintext
    ),
    services: [SyntheticService()]
)

try await withThrowingDiscardingTaskGroup { group in
    group.addTask { try await server.serve() }
    if let address = try await server.listeningAddress {
        print(
            "grpc-swift-2 peer listening on \(address) h2c (NIO singleton event loop group, default threads; \(ProcessInfo.processInfo.activeProcessorCount) cores)"
        )
        fflush(nil)  // flush stdout now: run.sh records this line
    }
}
