import CZlib

/// gzip (RFC 1952) through zlib: the one compression gRPC and Connect clients use by default.
public enum Gzip {
    public enum InflateError: Error, Equatable {
        /// The inflated bytes would exceed the limit; inflating stopped there, so a decompression bomb
        /// costs at most the limit in memory.
        case tooLarge(limit: Int)
        /// Not a gzip stream, corrupt, cut short, or followed by other bytes.
        case malformed(String)
    }

    /// Inflates in steps of this many bytes, checking the limit after each.
    private static let inflateStep = 16 * 1024

    /// Compresses `bytes` into one gzip member at zlib's default level.
    public static func compress(_ bytes: some Collection<UInt8>) -> [UInt8] {
        var input = Array(bytes)
        var stream = z_stream()
        // Window 15 + 16: a gzip header and trailer instead of zlib's.
        let started = sluice_deflateInit2(&stream, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY)
        precondition(started == Z_OK, "zlib could not start deflating (\(started)): out of memory")
        defer { deflateEnd(&stream) }
        var output = [UInt8](repeating: 0, count: Int(deflateBound(&stream, uLong(input.count))))
        let produced = input.withUnsafeMutableBufferPointer { source in
            output.withUnsafeMutableBufferPointer { destination in
                stream.next_in = source.baseAddress
                stream.avail_in = uInt(source.count)
                stream.next_out = destination.baseAddress
                stream.avail_out = uInt(destination.count)
                // deflateBound leaves room for everything, so one Z_FINISH call completes the stream.
                let status = deflate(&stream, Z_FINISH)
                precondition(status == Z_STREAM_END, "deflate into a deflateBound-sized buffer did not finish (\(status))")
                return destination.count - Int(stream.avail_out)
            }
        }
        output.removeSubrange(produced...)
        return output
    }

    /// Inflates one gzip member of at most `limit` bytes.
    public static func decompress(_ bytes: some Collection<UInt8>, limit: Int) throws(InflateError) -> [UInt8] {
        var input = Array(bytes)
        let result = input.withUnsafeMutableBufferPointer { source in inflate(source, limit: limit) }
        return try result.get()
    }

    private static func inflate(_ source: UnsafeMutableBufferPointer<UInt8>, limit: Int) -> Result<[UInt8], InflateError> {
        var stream = z_stream()
        guard sluice_inflateInit2(&stream, 15 + 16) == Z_OK else {
            return .failure(.malformed("zlib could not start inflating: out of memory"))
        }
        defer { inflateEnd(&stream) }
        stream.next_in = source.baseAddress
        stream.avail_in = uInt(source.count)
        var output: [UInt8] = []
        var step = [UInt8](repeating: 0, count: inflateStep)
        while true {
            let (status, produced) = step.withUnsafeMutableBufferPointer { destination in
                stream.next_out = destination.baseAddress
                stream.avail_out = uInt(destination.count)
                let status = CZlib.inflate(&stream, Z_NO_FLUSH)
                return (status, destination.count - Int(stream.avail_out))
            }
            guard output.count + produced <= limit else { return .failure(.tooLarge(limit: limit)) }
            output.append(contentsOf: step[..<produced])
            switch status {
            case Z_STREAM_END:
                guard stream.avail_in == 0 else {
                    return .failure(.malformed("\(stream.avail_in) bytes follow the end of the gzip stream"))
                }
                return .success(output)
            case Z_OK:
                continue
            case Z_BUF_ERROR:
                // No progress with room to write: the input ran out before the stream's end.
                return .failure(.malformed("the gzip stream ends early (truncated)"))
            default:
                let reason = stream.msg.map { String(cString: $0) } ?? "zlib error \(status)"
                return .failure(.malformed("not valid gzip data: \(reason)"))
            }
        }
    }
}
