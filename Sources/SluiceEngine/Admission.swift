/// Admission control as a pure state machine: at most `maxActive` jobs run, at most
/// `maxQueued` wait in FIFO order, the rest are rejected. With `maxActivePerKey`, a caller at
/// its limit waits while later callers with room go first, so one caller can't block others.
public struct Admission: Sendable {
    public struct Limits: Sendable, Equatable {
        public var maxActive: Int
        public var maxQueued: Int
        public var maxActivePerKey: Int?

        public init(maxActive: Int, maxQueued: Int, maxActivePerKey: Int? = nil) {
            self.maxActive = maxActive
            self.maxQueued = maxQueued
            self.maxActivePerKey = maxActivePerKey
        }
    }

    public enum Decision: Equatable, Sendable {
        case run
        /// 1-based position in the queue.
        case queued(position: Int)
        case rejected(reason: String)
    }

    public let limits: Limits
    public private(set) var active = 0
    private var activeByKey: [String: Int] = [:]
    private var queue: [(ticket: UInt64, key: String)] = []

    public init(limits: Limits) {
        self.limits = limits
    }

    public var queued: Int { queue.count }

    private func hasRoom(for key: String) -> Bool {
        active < limits.maxActive && (limits.maxActivePerKey.map { activeByKey[key, default: 0] < $0 } ?? true)
    }

    public mutating func admit(ticket: UInt64, key: String) -> Decision {
        if queue.isEmpty || limits.maxActivePerKey != nil, hasRoom(for: key) {
            start(key)
            return .run
        }
        guard queue.count < limits.maxQueued else {
            return .rejected(
                reason:
                    "Sluice is at capacity: \(active) streams running (limit \(limits.maxActive)) and \(queue.count) queued (limit \(limits.maxQueued)); retry later"
            )
        }
        queue.append((ticket, key))
        return .queued(position: queue.count)
    }

    /// A running job ended. Returns the tickets that start now.
    public mutating func release(key: String) -> [UInt64] {
        active -= 1
        activeByKey[key, default: 1] -= 1
        if activeByKey[key] == 0 { activeByKey[key] = nil }
        var started: [UInt64] = []
        while let index = queue.firstIndex(where: { hasRoom(for: $0.key) }) {
            let next = queue.remove(at: index)
            start(next.key)
            started.append(next.ticket)
        }
        return started
    }

    /// A queued job gave up (timeout, cancellation). Returns false if it was not queued.
    public mutating func withdraw(ticket: UInt64) -> Bool {
        guard let index = queue.firstIndex(where: { $0.ticket == ticket }) else { return false }
        queue.remove(at: index)
        return true
    }

    /// Current 1-based positions of every queued ticket.
    public var positions: [(ticket: UInt64, position: Int)] {
        queue.enumerated().map { ($0.element.ticket, $0.offset + 1) }
    }

    private mutating func start(_ key: String) {
        active += 1
        activeByKey[key, default: 0] += 1
    }
}
