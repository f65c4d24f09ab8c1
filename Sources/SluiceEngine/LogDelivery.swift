import SluiceStore

/// Which of a stream's events its attached client may have yet. With a shared store an event reaches the client only
/// once the log has acknowledged it: if this replica dies, the replica that takes the stream over continues after the
/// last logged seq, so no client ever holds an event that the new owner numbers differently. Without a log
/// (`--store memory`) nothing is held. Part of `StreamChannel`'s state; the log's writer reports its progress.
struct LogDelivery: Equatable {
    /// Events before this seq may be delivered.
    private(set) var end: Int
    /// The stream was lost to another replica: what is held back is never delivered (its seqs are the new owner's),
    /// the stream's end is.
    private(set) var dropsHeld = false

    /// No log: every event may go at once.
    static let unheld = LogDelivery(end: .max)

    /// Events after `loggedSeq` wait for the log (those up to it were logged by an earlier owner).
    static func held(after loggedSeq: Int) -> LogDelivery { LogDelivery(end: loggedSeq + 1) }

    private init(end: Int) {
        self.end = end
    }

    /// Of the events before `nextSeq`, those before this seq may be delivered.
    func deliverableEnd(nextSeq: Int) -> Int { min(end, nextSeq) }

    /// Whether a stream finished after `nextSeq - 1` may show its end: nothing is held back for the log any more.
    func endIsDeliverable(nextSeq: Int) -> Bool { end >= nextSeq || dropsHeld }

    /// Applies the log's progress; true when it changes what may be delivered.
    mutating func apply(_ progress: StreamLogProgress) -> Bool {
        switch progress {
        case .logged(let seq):
            guard seq + 1 > end else { return false }
            end = seq + 1
        case .notResumable:
            // The log will not get the rest: the stream goes on here alone (no other replica may claim it).
            guard end != .max else { return false }
            end = .max
        case .lost:
            guard !dropsHeld else { return false }
            dropsHeld = true
        }
        return true
    }
}
