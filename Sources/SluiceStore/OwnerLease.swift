/// One running stream's ownership as its writer sees it: the epoch every write is fenced by (Redis refuses a write
/// whose epoch is not the stream's current one), and whether another replica's claim took it away.
struct OwnerLease: Equatable {
    let epoch: Int
    private(set) var lost = false

    init(epoch: Int) {
        self.epoch = epoch
    }

    /// Writes go out while the stream is ours; after a refusal nothing more of it is written (or renewed).
    var mayWrite: Bool { !lost }

    /// Redis refused a fenced write or renewal (another replica owns the stream now), or this replica stalled past
    /// its lease (another may own it). True the first time only, when the stream must be aborted (later refusals
    /// are the writes already in flight).
    mutating func lose() -> Bool {
        defer { lost = true }
        return !lost
    }
}
