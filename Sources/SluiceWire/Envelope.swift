/// The flags byte that starts every gRPC / Connect envelope.
public struct EnvelopeFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8

    public init(rawValue: UInt8) {
        self.rawValue = rawValue
    }

    public static let compressed = EnvelopeFlags(rawValue: 0x01)
    /// Connect streaming only: marks the end-stream message that carries the status.
    public static let endStream = EnvelopeFlags(rawValue: 0x02)
}

/// One message: a flags byte, a 4-byte big-endian length, then the payload.
public struct Envelope: Sendable, Equatable {
    public var flags: EnvelopeFlags
    public var payload: [UInt8]

    public init(flags: EnvelopeFlags = [], payload: [UInt8]) {
        self.flags = flags
        self.payload = payload
    }
}

public enum EnvelopeEncoder {
    static let headerSize = 5

    public static func encode(_ payload: some Collection<UInt8>, flags: EnvelopeFlags = []) -> [UInt8] {
        var buffer: [UInt8] = []
        buffer.reserveCapacity(headerSize + payload.count)
        append(payload, flags: flags, to: &buffer)
        return buffer
    }

    /// Appends an envelope to `buffer`, so several messages can share one write.
    public static func append(_ payload: some Collection<UInt8>, flags: EnvelopeFlags = [], to buffer: inout [UInt8]) {
        // No reserveCapacity here: it allocates exactly, which would defeat the array's geometric
        // growth and make a loop of appends quadratic.
        let count = payload.count
        precondition(count <= Int(UInt32.max), "an envelope payload cannot exceed 4 GiB")
        let length = UInt32(count)
        buffer.append(flags.rawValue)
        buffer.append(UInt8(truncatingIfNeeded: length >> 24))
        buffer.append(UInt8(truncatingIfNeeded: length >> 16))
        buffer.append(UInt8(truncatingIfNeeded: length >> 8))
        buffer.append(UInt8(truncatingIfNeeded: length))
        buffer.append(contentsOf: payload)
    }
}

/// Reassembles envelopes from chunks that may split or join messages anywhere.
public struct EnvelopeDecoder: Sendable {
    public static let defaultMaxMessageSize = 4 * 1024 * 1024

    /// Drained buffers larger than this give their memory back, so one big message
    /// doesn't pin megabytes for the rest of a long-lived stream.
    private static let retainedCapacityLimit = 64 * 1024

    public let maxMessageSize: Int
    /// What a message flagged compressed is inflated with (the call's `grpc-encoding` or
    /// `connect-content-encoding`); identity means no message may be flagged compressed.
    public let encoding: MessageEncoding
    private var buffer: [UInt8] = []
    /// Start of the unread bytes; consumed bytes are dropped lazily (see `compact`).
    private var readIndex = 0

    public init(maxMessageSize: Int = defaultMaxMessageSize, encoding: MessageEncoding = .identity) {
        precondition(maxMessageSize >= 0, "maxMessageSize must not be negative")
        self.maxMessageSize = maxMessageSize
        self.encoding = encoding
    }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        compact()
        buffer.append(contentsOf: bytes)
    }

    public mutating func append(_ bytes: some Collection<UInt8>) {
        compact()
        buffer.append(contentsOf: bytes)
    }

    /// The next complete message, or nil when more bytes are needed.
    ///
    /// A message flagged compressed is returned inflated, without the flag.
    ///
    /// Throws `.resourceExhausted` for a length above `maxMessageSize` and `.internal` for a message
    /// flagged compressed when the call declared no encoding, both as soon as the header arrives;
    /// `.resourceExhausted` for a message that inflates beyond `maxMessageSize` (inflating stops there)
    /// and `.invalidArgument` for one that is not valid gzip. The offending message stays buffered, so
    /// calling again throws again: the stream cannot be resynchronised and must be failed.
    public mutating func next() throws(RPCError) -> Envelope? {
        guard let header = pendingHeader else { return nil }
        if header.flags.contains(.compressed) && encoding == .identity {
            throw RPCError(
                .internal,
                "a message is flagged compressed but the call declared no encoding: send grpc-encoding (or connect-content-encoding) gzip with it, or clear the flag"
            )
        }
        if header.length > maxMessageSize {
            throw RPCError(
                .resourceExhausted,
                "message of \(header.length) bytes exceeds the maximum message size of \(maxMessageSize) bytes"
            )
        }
        let start = readIndex + EnvelopeEncoder.headerSize
        let end = start + header.length
        guard end <= buffer.count else { return nil }
        guard header.flags.contains(.compressed) else {
            let payload = Array(buffer[start..<end])
            readIndex = end
            return Envelope(flags: header.flags, payload: payload)
        }
        let inflated: [UInt8]
        do {
            inflated = try Gzip.decompress(buffer[start..<end], limit: maxMessageSize)
        } catch {
            switch error {
            case .tooLarge:
                throw RPCError(
                    .resourceExhausted,
                    "a \(header.length)-byte gzip message inflates beyond the maximum message size of \(maxMessageSize) bytes"
                )
            case .malformed(let reason):
                throw RPCError(.invalidArgument, "a message flagged gzip-compressed could not be inflated: \(reason)")
            }
        }
        readIndex = end
        return Envelope(flags: header.flags.subtracting(.compressed), payload: inflated)
    }

    /// True when buffered bytes start a message that hasn't fully arrived. Meaningful once `next()`
    /// has returned nil: at END_STREAM it means the peer's length prefix promised more than it sent.
    public var hasPartialMessage: Bool {
        partialMessageDescription != nil
    }

    public var partialMessageDescription: String? {
        let available = buffer.count - readIndex
        guard available > 0 else { return nil }
        guard let header = pendingHeader else {
            return "the request ended inside a message header: only \(available) of its \(EnvelopeEncoder.headerSize) bytes arrived"
        }
        let bodyBytes = available - EnvelopeEncoder.headerSize
        guard bodyBytes < header.length else { return nil }
        return "the request ended inside a message: the length prefix announced \(header.length) bytes but only \(bodyBytes) arrived"
    }

    private var pendingHeader: (flags: EnvelopeFlags, length: Int)? {
        guard buffer.count - readIndex >= EnvelopeEncoder.headerSize else { return nil }
        let i = readIndex
        let length =
            UInt32(buffer[i + 1]) << 24 | UInt32(buffer[i + 2]) << 16
            | UInt32(buffer[i + 3]) << 8 | UInt32(buffer[i + 4])
        return (EnvelopeFlags(rawValue: buffer[i]), Int(length))
    }

    /// Drops consumed bytes only once they are at least as many as the unread ones, so each byte
    /// is moved at most a constant number of times on average: linear overall, never quadratic.
    private mutating func compact() {
        guard readIndex > 0 else { return }
        if readIndex == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.capacity <= Self.retainedCapacityLimit)
        } else if readIndex >= buffer.count - readIndex {
            buffer.removeSubrange(..<readIndex)
        } else {
            return
        }
        readIndex = 0
    }
}
