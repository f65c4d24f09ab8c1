/// One Redis connection's life, as a value: connecting, up, or down waiting out a backoff, and the bounded queue
/// of commands Redis has not yet acknowledged. `RedisConnection` performs its actions (hiredis calls, timers).
///
/// A command stays queued until its reply arrives, so commands in flight when the connection drops are sent
/// again after it comes back (the log's writes are idempotent: a repeated `XADD 0-<seq>` is refused as a
/// duplicate, see `RedisStreamLog`). While down, new commands queue up to `maxQueuedBytes`; past that they are
/// dropped and reported, so their streams can be marked as not resumable on other replicas.
public struct RedisConnectionStateMachine: Sendable {
    public struct Command: Sendable, Equatable {
        /// The command as Redis reads it (RESP: `*<count>`, then `$<length>` and the bytes of each argument), built
        /// once in one buffer and handed to hiredis as is: no array per argument to allocate, copy and free.
        public private(set) var encoded: [UInt8] = []
        /// Arguments announced in the header, and appended so far.
        private let count: Int
        private var appended = 0
        /// The stream whose log the command writes, if any (reported when the command is dropped).
        public var streamID: String?
        /// Nonzero for a read whose reply goes back to the reader waiting under this tag.
        public var tag: UInt64 = 0
        /// Nonzero for a stream's log entry: the seq its reply acknowledges.
        public var logSeq = 0
        /// When it was queued (`sluice_store_latency_seconds` runs from here to its reply).
        public var queuedAt = ContinuousClock.now

        /// An empty command of `count` arguments, `capacity` bytes of them: `append` each, then send it.
        public init(count: Int, capacity: Int = 0, streamID: String? = nil) {
            self.count = count
            self.streamID = streamID
            encoded.reserveCapacity(16 + capacity + count * 8)
            encoded.append(UInt8(ascii: "*"))
            appendDecimal(count)
        }

        public init(_ arguments: [[UInt8]], streamID: String? = nil) {
            self.init(count: arguments.count, capacity: arguments.reduce(0) { $0 + $1.count }, streamID: streamID)
            for argument in arguments { append(argument) }
        }

        public init(_ arguments: [String], streamID: String? = nil) {
            self.init(count: arguments.count, capacity: arguments.reduce(0) { $0 + $1.utf8.count }, streamID: streamID)
            for argument in arguments { append(argument) }
        }

        public mutating func append(_ argument: some Collection<UInt8>) {
            precondition(appended < count, "a Redis command takes more arguments than its header announced")
            appended += 1
            encoded.append(UInt8(ascii: "$"))
            appendDecimal(argument.count)
            encoded.append(contentsOf: argument)
            encoded.append(13)
            encoded.append(10)
        }

        public mutating func append(_ argument: String) {
            var argument = argument
            argument.withUTF8 { append($0) }
        }

        /// Every argument announced was appended.
        public var isComplete: Bool { appended == count }

        /// The arguments, decoded again from `encoded` (for errors and tests, not the write path).
        public var arguments: [[UInt8]] {
            var arguments: [[UInt8]] = []
            var index = encoded.firstIndex(of: 10)! + 1
            while index < encoded.count {
                let lengthEnd = encoded[index...].firstIndex(of: 13)!
                let length = Int(String(decoding: encoded[(index + 1)..<lengthEnd], as: UTF8.self))!
                arguments.append(Array(encoded[(lengthEnd + 2)..<(lengthEnd + 2 + length)]))
                index = lengthEnd + 2 + length + 2
            }
            return arguments
        }

        /// What it takes of the queue's `maxQueuedBytes`.
        public var bytes: Int { encoded.count }

        /// `value` in decimal, then CRLF.
        private mutating func appendDecimal(_ value: Int) {
            precondition(value >= 0)
            var digits = 1
            var rest = value
            while rest >= 10 {
                digits += 1
                rest /= 10
            }
            let start = encoded.count
            encoded.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: digits))
            rest = value
            for position in stride(from: start + digits - 1, through: start, by: -1) {
                encoded[position] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
            }
            encoded.append(13)
            encoded.append(10)
        }
    }

    public enum State: Sendable, Equatable {
        case idle
        case connecting
        case up
        /// `failures` connection attempts in a row have failed; the next waits out the backoff.
        case down(failures: Int)
        case closed
    }

    public enum Action: Sendable, Equatable {
        /// Open a connection (and authenticate); report `connected` or `connectionLost`.
        case connect
        /// Hand these commands to the connection, in order; replies come back in the same order.
        case send([Command])
        /// Report `backoffElapsed` after this long.
        case scheduleReconnect(after: Duration)
        /// The connection became usable (true) or stopped being usable (false).
        case reportUp(Bool)
        /// These commands were never sent and never will be: the queue was full.
        case dropped([Command])
        /// Close the connection for good.
        case disconnect
    }

    /// What becomes of a command just queued (not an array of actions: this is the write path's one call per event).
    public enum Enqueued: Sendable, Equatable {
        /// It waits for the connection.
        case queued
        /// Hand it to the connection now.
        case send(Command)
        /// Never sent and never will be: the queue is full, or the connection closed.
        case dropped(Command)
    }

    public struct Backoff: Sendable, Equatable {
        public var initial: Duration
        public var maximum: Duration

        public init(initial: Duration = .milliseconds(100), maximum: Duration = .seconds(2)) {
            self.initial = initial
            self.maximum = maximum
        }

        /// Doubles with each failure in a row, up to `maximum`.
        func delay(afterFailures failures: Int) -> Duration {
            var delay = initial
            for _ in 1..<max(failures, 1) where delay < maximum { delay *= 2 }
            return min(delay, maximum)
        }
    }

    public private(set) var state: State = .idle
    public let maxQueuedBytes: Int
    public let backoff: Backoff
    /// Commands not yet acknowledged, oldest first from `head`; the first `sent` of them went out on the current
    /// connection.
    private var queue: [Command] = []
    private var head = 0
    private var sent = 0
    public private(set) var queuedBytes = 0
    /// Connection attempts failed in a row (an attempt after a dropped connection counts from 1 again).
    private var failures = 0

    public init(maxQueuedBytes: Int, backoff: Backoff = Backoff()) {
        self.maxQueuedBytes = maxQueuedBytes
        self.backoff = backoff
    }

    /// Commands waiting for a reply or for the connection.
    public var queuedCount: Int { queue.count - head }

    public mutating func start() -> [Action] {
        guard state == .idle else { return [] }
        state = .connecting
        return [.connect]
    }

    /// The connection is open and authenticated: everything queued goes out.
    public mutating func connected() -> [Action] {
        guard state == .connecting else { preconditionFailure("Redis connection reported connected while \(state)") }
        state = .up
        failures = 0
        let unsent = Array(queue[(head + sent)...])
        sent = queuedCount
        return unsent.isEmpty ? [.reportUp(true)] : [.reportUp(true), .send(unsent)]
    }

    /// The connection attempt failed, or an open connection dropped. Unacknowledged commands go out again on the
    /// next connection.
    public mutating func connectionLost() -> [Action] {
        guard state == .connecting || state == .up else { return [] }
        let wasUp = state == .up
        failures += 1
        state = .down(failures: failures)
        sent = 0
        let retry = Action.scheduleReconnect(after: backoff.delay(afterFailures: failures))
        return wasUp ? [.reportUp(false), retry] : [retry]
    }

    public mutating func backoffElapsed() -> [Action] {
        guard case .down = state else { return [] }
        state = .connecting
        return [.connect]
    }

    /// Queues `command`: sent at once while up; dropped when the queue is full.
    public mutating func enqueue(_ command: Command) -> Enqueued {
        guard state != .closed, queuedBytes + command.bytes <= maxQueuedBytes else { return .dropped(command) }
        queue.append(command)
        queuedBytes += command.bytes
        guard state == .up else { return .queued }
        sent += 1
        return .send(command)
    }

    /// The reply to the oldest command sent arrived; returns that command (the shell interprets the reply).
    public mutating func replied() -> Command {
        guard state == .up, sent > 0 else { preconditionFailure("a Redis reply arrived with no command in flight (\(state))") }
        let command = queue[head]
        head += 1
        sent -= 1
        queuedBytes -= command.bytes
        if head > 1024, head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
        }
        return command
    }

    /// Closes for good; whatever is still queued is dropped.
    public mutating func close() -> [Action] {
        guard state != .closed else { return [] }
        let wasConnected = state == .up || state == .connecting
        state = .closed
        let left = Array(queue[head...])
        queue = []
        head = 0
        sent = 0
        queuedBytes = 0
        var actions: [Action] = []
        if wasConnected { actions.append(.disconnect) }
        if !left.isEmpty { actions.append(.dropped(left)) }
        return actions
    }
}
