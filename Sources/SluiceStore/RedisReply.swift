import CHiredis

/// A Redis reply, copied out of hiredis's `redisReply` (which hiredis frees when the callback returns).
public enum RedisReply: Sendable, Equatable {
    case status(String)
    case error(String)
    case integer(Int)
    case string([UInt8])
    case array([RedisReply])
    case null

    init(_ reply: UnsafeMutablePointer<redisReply>) {
        let value = reply.pointee
        switch value.type {
        case REDIS_REPLY_STATUS: self = .status(Self.text(value))
        case REDIS_REPLY_ERROR: self = .error(Self.text(value))
        case REDIS_REPLY_INTEGER: self = .integer(Int(value.integer))
        case REDIS_REPLY_STRING: self = .string(Self.bytes(value))
        case REDIS_REPLY_ARRAY:
            self = .array((0..<value.elements).map { RedisReply(sluice_redis_reply_element(reply, $0)) })
        default: self = .null
        }
    }

    private static func bytes(_ value: redisReply) -> [UInt8] {
        guard let pointer = value.str, value.len > 0 else { return [] }
        return pointer.withMemoryRebound(to: UInt8.self, capacity: value.len) { Array(UnsafeBufferPointer(start: $0, count: value.len)) }
    }

    private static func text(_ value: redisReply) -> String { String(decoding: bytes(value), as: UTF8.self) }

    public var isError: Bool {
        if case .error = self { return true }
        return false
    }
}

/// A reply as hiredis holds it, valid only during the callback it is given to: a write's acknowledgement asks only
/// whether it is an error, so nothing is copied for it; a read copies the reply (`copy`).
public struct RedisReplyView {
    private let reply: UnsafeMutablePointer<redisReply>

    init(_ reply: UnsafeMutablePointer<redisReply>) {
        self.reply = reply
    }

    /// The error's text, when Redis refused the command.
    public var errorMessage: String? {
        guard reply.pointee.type == REDIS_REPLY_ERROR else { return nil }
        guard case .error(let message) = copy() else { return nil }
        return message
    }

    /// The whole reply, copied out of hiredis's.
    public func copy() -> RedisReply { RedisReply(reply) }
}
