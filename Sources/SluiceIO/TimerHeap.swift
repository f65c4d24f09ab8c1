public struct TimerID: Hashable, Sendable {
    let value: UInt64
}

/// A binary min-heap of deadlines. The heap holds plain (deadline, id) pairs, so sifting moves no closures;
/// a cancelled timer's action is freed at once and its stale heap entry skipped when it surfaces. libcurl
/// moves its timer on almost every call, so stale entries are compacted away once they outnumber live ones.
package struct TimerHeap {
    private struct Entry {
        var deadline: ContinuousClock.Instant
        var id: UInt64
    }

    private var heap: [Entry] = []
    private var actions: [UInt64: () -> Void] = [:]
    private var nextID: UInt64 = 0

    /// Timers scheduled and not yet fired or cancelled.
    var count: Int { actions.count }
    /// Heap entries, stale ones included (for tests of compaction).
    var storedEntries: Int { heap.count }

    mutating func schedule(at deadline: ContinuousClock.Instant, _ action: @escaping () -> Void) -> TimerID {
        nextID += 1
        actions[nextID] = action
        heap.append(Entry(deadline: deadline, id: nextID))
        siftUp(heap.count - 1)
        return TimerID(value: nextID)
    }

    mutating func cancel(_ id: TimerID) {
        guard actions.removeValue(forKey: id.value) != nil else { return }
        if heap.count > 64 && heap.count > 2 * actions.count { compact() }
    }

    func millisecondsUntilNext(now: ContinuousClock.Instant) -> Int32 {
        guard let first = heap.first else { return -1 }
        let remaining = first.deadline - now
        if remaining <= .zero { return 0 }
        let (seconds, attoseconds) = remaining.components
        // Round up so a timer never fires early and the loop does not spin.
        let ms = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(clamping: ms)
    }

    mutating func popDue(now: ContinuousClock.Instant) -> (() -> Void)? {
        while let first = heap.first, first.deadline <= now {
            let entry = popFirst()
            if let action = actions.removeValue(forKey: entry.id) { return action }
        }
        return nil
    }

    /// Drops the entries of cancelled timers and rebuilds the heap (Floyd's bottom-up construction).
    private mutating func compact() {
        heap.removeAll { actions[$0.id] == nil }
        var index = heap.count / 2
        while index > 0 {
            index -= 1
            siftDown(index)
        }
    }

    private mutating func popFirst() -> Entry {
        heap.swapAt(0, heap.count - 1)
        let entry = heap.removeLast()
        if !heap.isEmpty { siftDown(0) }
        return entry
    }

    private mutating func siftUp(_ index: Int) {
        var child = index
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].deadline < heap[parent].deadline else { return }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func siftDown(_ index: Int) {
        var parent = index
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < heap.count, heap[left].deadline < heap[smallest].deadline { smallest = left }
            if right < heap.count, heap[right].deadline < heap[smallest].deadline { smallest = right }
            if smallest == parent { return }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
    }
}
