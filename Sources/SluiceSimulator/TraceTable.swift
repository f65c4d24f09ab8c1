/// The last `traceparent` the simulator saw for each trace, and how many requests carried that trace, so tests can
/// check what an upstream attempt was sent. Bounded: past `capacity` traces the oldest quarter is forgotten.
struct TraceTable: Sendable {
    struct Entry: Sendable, Equatable {
        var traceparent: String
        var requests: Int
    }

    let capacity: Int
    private var entries: [String: Entry] = [:]
    /// Trace ids in the order first seen, for eviction.
    private var order: [String] = []

    init(capacity: Int) {
        self.capacity = capacity
    }

    mutating func record(traceID: String, traceparent: String) {
        if entries[traceID] == nil { order.append(traceID) }
        entries[traceID] = Entry(traceparent: traceparent, requests: (entries[traceID]?.requests ?? 0) + 1)
        if order.count > capacity {
            let evicted = order.count - max(1, capacity * 3 / 4)
            for traceID in order.prefix(evicted) { entries[traceID] = nil }
            order.removeFirst(evicted)
        }
    }

    func entry(traceID: String) -> Entry? {
        entries[traceID]
    }
}
