import SluiceWire

/// What a replica shutting down with a shared store does with a stream still running once `--handoff-after` has
/// passed: hand it off (stop it at an event boundary, release it in the store, so the replica its client re-attaches
/// to continues it at once), or keep it here until it ends or the drain times out, as without a store. Pure: the
/// engine gathers the facts and performs the verdict.
struct HandOffPlan {
    enum Verdict: Equatable {
        case handOff
        /// Kept here; why, for the log.
        case keep(String)
    }

    /// The `reason` of the `stream_handoff` event.
    static let reason = "shutdown"

    /// - Parameters:
    ///   - clientCanResume: the stream's client can resume it elsewhere (a `/v1/messages` client cannot).
    ///   - events: the stream's buffered events, oldest first, as encoded.
    ///   - storeCanHandOff: the store is up, has every event of the stream, and this replica still owns it.
    static func verdict(clientCanResume: Bool, events: [(seq: Int, frame: [UInt8])], storeCanHandOff: Bool) -> Verdict {
        guard clientCanResume else { return .keep("its client cannot resume it on another replica (/v1/messages)") }
        // Another replica rebuilds the stream from its log, which keeps about as much as the replay buffer.
        guard events.first.map({ $0.seq == 1 }) ?? true else {
            return .keep("its first events have left the replay buffer, so no other replica could rebuild it")
        }
        var parsed: [(seq: Int, frame: JSONValue)] = []
        for event in events {
            guard let frame = try? JSONValue(parsing: event.frame) else { return .keep("event \(event.seq) is not JSON") }
            parsed.append((event.seq, frame))
        }
        // What the replica that claims it would do: the same rebuild as a takeover after a crash.
        switch StreamTakeover(events: parsed).next {
        case .unsupported(let why): return .keep("another replica could not continue it: \(why)")
        case .ended: return .keep("it has just ended")
        case .startTurn, .continueTurn, .complete: break
        }
        guard storeCanHandOff else {
            return .keep("the shared store is unreachable or missed some of its events, so no other replica could continue it")
        }
        return .handOff
    }
}
