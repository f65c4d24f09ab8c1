import SluiceIO
import SluiceTransport
import SluiceWire

/// `/sluice.v1.Synthetic/Stream`: N frames of S bytes, I ms apart. Lets users load-test their
/// own clients and proxies, and our benchmarks compare the transport against its peers.
public enum SyntheticService {
    public static let streamPath = "/sluice.v1.Synthetic/Stream"
    public static let maxFrames = 1_000_000
    public static let maxFrameSize = 1 << 20
    public static let maxIntervalMilliseconds = 60_000

    private static func integer(_ body: JSONValue, _ field: String, default value: Int) throws(RPCError) -> Int {
        guard let raw = body[field], !raw.isNull else { return value }
        guard let number = raw.intValue else { throw RPCError(.invalidArgument, "'\(field)' must be an integer") }
        return number
    }

    public static func register(in router: inout RPCRouter) {
        router.register(streamPath) { request, writer in
            let body = try JSONValue.requestObject(request.message)
            let frames = try integer(body, "frames", default: 1)
            let size = try integer(body, "size", default: 16)
            let interval = try integer(body, "interval_ms", default: 0)
            guard (0...maxFrames).contains(frames) else {
                throw RPCError(.invalidArgument, "frames must be between 0 and \(maxFrames), got \(frames)")
            }
            guard (0...maxFrameSize).contains(size) else {
                throw RPCError(.invalidArgument, "size must be between 0 and \(maxFrameSize) bytes, got \(size)")
            }
            guard (0...maxIntervalMilliseconds).contains(interval) else {
                throw RPCError(.invalidArgument, "interval_ms must be between 0 and \(maxIntervalMilliseconds), got \(interval)")
            }
            // `{"seq":N,"type":"message_delta","delta":"…"}`: only `seq` changes, so the rest is written once.
            let prefix = Array(#"{"seq":"#.utf8)
            var suffix = Array(#","type":"message_delta","delta":"#.utf8)
            JSONValue.serialize(
                string: String(decoding: (0..<size).map { UInt8(ascii: "a") + UInt8($0 % 26) }, as: UTF8.self), into: &suffix)
            suffix.append(UInt8(ascii: "}"))
            var frame: [UInt8] = []
            frame.reserveCapacity(prefix.count + suffix.count + 20)
            for seq in stride(from: 1, through: frames, by: 1) {
                if interval > 0 && seq > 1 { try await EventLoop.sleep(for: .milliseconds(interval)) }
                frame.removeAll(keepingCapacity: true)
                frame += prefix
                JSONNumber(seq).write(into: &frame)
                frame += suffix
                try await writer.write(frame)
            }
        }
    }
}
