import Foundation
import SluiceTransport
import SluiceWire

/// `/sluice.v1.Synthetic/Stream`: N frames of S bytes, I ms apart. Lets users load-test their
/// own clients and proxies, and our benchmarks compare the transport against its peers.
public enum SyntheticService {
    public static let streamPath = "/sluice.v1.Synthetic/Stream"
    public static let maxFrames = 1_000_000
    public static let maxFrameSize = 1 << 20
    public static let maxIntervalMilliseconds = 60_000

    struct Request: Decodable {
        var frames: Int?
        var size: Int?
        var intervalMilliseconds: Int?

        enum CodingKeys: String, CodingKey {
            case frames, size
            case intervalMilliseconds = "interval_ms"
        }
    }

    public static func register(in router: inout RPCRouter) {
        router.register(streamPath) { request, writer in
            let parsed = try RequestDecoding.decode(Request.self, from: request.message)
            let frames = parsed.frames ?? 1
            let size = parsed.size ?? 16
            let interval = parsed.intervalMilliseconds ?? 0
            guard (0...maxFrames).contains(frames) else {
                throw RPCError(.invalidArgument, "frames must be between 0 and \(maxFrames), got \(frames)")
            }
            guard (0...maxFrameSize).contains(size) else {
                throw RPCError(.invalidArgument, "size must be between 0 and \(maxFrameSize) bytes, got \(size)")
            }
            guard (0...maxIntervalMilliseconds).contains(interval) else {
                throw RPCError(.invalidArgument, "interval_ms must be between 0 and \(maxIntervalMilliseconds), got \(interval)")
            }
            let prefix = Array(#"{"seq":"#.utf8)
            let middle = Array(#","type":"message_delta","delta":""#.utf8)
            let delta = (0..<size).map { UInt8(ascii: "a") + UInt8($0 % 26) }
            var frame: [UInt8] = []
            frame.reserveCapacity(prefix.count + middle.count + size + 24)
            for seq in stride(from: 1, through: frames, by: 1) {
                if interval > 0 && seq > 1 { try await Task.sleep(for: .milliseconds(interval)) }
                frame.removeAll(keepingCapacity: true)
                frame += prefix
                frame += String(seq).utf8
                frame += middle
                frame += delta
                frame += #""}"#.utf8
                try await writer.write(frame)
            }
        }
    }
}

/// Request decoding shared by every method: errors become INVALID_ARGUMENT saying what is wrong.
public enum RequestDecoding {
    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws(RPCError) -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(bytes))
        } catch let DecodingError.dataCorrupted(context) where context.codingPath.isEmpty {
            throw RPCError(.invalidArgument, "the request is not valid JSON: \(describe(context.underlyingError) ?? context.debugDescription)")
        } catch let DecodingError.typeMismatch(expected, context) {
            throw RPCError(.invalidArgument, "request field '\(path(context.codingPath))' must be \(expected)")
        } catch let DecodingError.valueNotFound(expected, context) {
            throw RPCError(.invalidArgument, "request field '\(path(context.codingPath))' must be \(expected), not null")
        } catch let DecodingError.keyNotFound(key, context) {
            throw RPCError(.invalidArgument, "request field '\(path(context.codingPath + [key]))' is required")
        } catch let DecodingError.dataCorrupted(context) {
            throw RPCError(.invalidArgument, "request field '\(path(context.codingPath))' is invalid: \(context.debugDescription)")
        } catch {
            throw RPCError(.invalidArgument, "the request could not be decoded: \(error)")
        }
    }

    private static func path(_ codingPath: [any CodingKey]) -> String {
        codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }

    private static func describe(_ error: (any Error)?) -> String? {
        guard let error else { return nil }
        let nsError = error as NSError
        return (nsError.userInfo[NSDebugDescriptionErrorKey] as? String) ?? "\(error)"
    }
}
