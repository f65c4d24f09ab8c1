/// The channels one subscriber connection should be subscribed to, as a value: how many local followers want each
/// channel, and where Redis stands with it (subscribing, subscribed, unsubscribing). `RedisSubscriber` performs its
/// actions on a hiredis connection in pub/sub mode.
///
/// - Many followers of one channel share one subscription: the first `follow` subscribes, the last `unfollow`
///   unsubscribes.
/// - At most one SUBSCRIBE or UNSUBSCRIBE of a channel is in flight: a follow while its UNSUBSCRIBE is pending
///   subscribes again once Redis has confirmed it, an unfollow while its SUBSCRIBE is pending unsubscribes once that
///   is confirmed. (Overlapping requests of one channel make hiredis's per-channel callback bookkeeping and Redis's
///   disagree.)
/// - A confirmed SUBSCRIBE notifies the channel's followers: whatever was published before Redis registered the
///   subscription was not seen, so they read once more.
/// - A lost connection forgets every subscription; once it is back, one SUBSCRIBE re-makes those still followed (and
///   its confirmations notify their followers, who catch up on what was published meanwhile).
public struct RedisSubscriptionStateMachine: Sendable, Equatable {
    public enum Action: Sendable, Equatable {
        /// Send SUBSCRIBE with these channels.
        case subscribe([String])
        /// Send UNSUBSCRIBE with these channels.
        case unsubscribe([String])
        /// Wake the followers of this channel: the log may have grown.
        case notify(String)
    }

    /// Where Redis stands with a channel.
    enum Standing: Sendable, Equatable {
        case unsubscribed
        case subscribing
        case subscribed
        case unsubscribing
    }

    struct Channel: Sendable, Equatable {
        var followers = 0
        var standing = Standing.unsubscribed
    }

    private var channels: [String: Channel] = [:]
    public private(set) var connected = false

    public init() {}

    /// Followers of `channel` on this connection.
    public func followers(of channel: String) -> Int { channels[channel]?.followers ?? 0 }

    /// Channels Redis has confirmed and not yet been asked to drop.
    public var subscribedChannels: Set<String> { Set(channels.filter { $0.value.standing == .subscribed }.keys) }

    /// Channels the machine keeps any state for (followed, or with a request in flight).
    public var trackedCount: Int { channels.count }

    /// A follower starts waiting for `channel`'s messages.
    public mutating func follow(_ channel: String) -> [Action] {
        var entry = channels[channel] ?? Channel()
        entry.followers += 1
        var actions: [Action] = []
        if entry.followers == 1, connected, entry.standing == .unsubscribed {
            entry.standing = .subscribing
            actions.append(.subscribe([channel]))
        }
        channels[channel] = entry
        return actions
    }

    /// A follower of `channel` stops waiting for its messages.
    public mutating func unfollow(_ channel: String) -> [Action] {
        guard var entry = channels[channel], entry.followers > 0 else { return [] }
        entry.followers -= 1
        var actions: [Action] = []
        if entry.followers == 0 {
            switch entry.standing {
            case .subscribed:
                entry.standing = .unsubscribing
                actions.append(.unsubscribe([channel]))
            case .unsubscribed:
                channels[channel] = nil
                return []
            case .subscribing, .unsubscribing:
                break  // settled when Redis confirms the request in flight
            }
        }
        channels[channel] = entry
        return actions
    }

    /// The connection is up (after a reconnect too): every followed channel is subscribed in one command.
    public mutating func connectionUp() -> [Action] {
        connected = true
        var wanted: [String] = []
        for (name, var entry) in channels {
            if entry.followers == 0 {
                channels[name] = nil
                continue
            }
            entry.standing = .subscribing
            channels[name] = entry
            wanted.append(name)
        }
        return wanted.isEmpty ? [] : [.subscribe(wanted.sorted())]
    }

    /// The connection dropped: Redis forgot every subscription (followers keep their count; they are re-made
    /// when it is back).
    public mutating func connectionLost() {
        connected = false
        for (name, var entry) in channels {
            if entry.followers == 0 {
                channels[name] = nil
            } else {
                entry.standing = .unsubscribed
                channels[name] = entry
            }
        }
    }

    /// Redis confirmed a SUBSCRIBE of `channel`.
    public mutating func subscribed(_ channel: String) -> [Action] {
        guard connected, var entry = channels[channel], entry.standing == .subscribing else { return [] }
        if entry.followers == 0 {
            entry.standing = .unsubscribing
            channels[channel] = entry
            return [.unsubscribe([channel])]
        }
        entry.standing = .subscribed
        channels[channel] = entry
        return [.notify(channel)]
    }

    /// Redis confirmed an UNSUBSCRIBE of `channel`.
    public mutating func unsubscribed(_ channel: String) -> [Action] {
        guard connected, var entry = channels[channel], entry.standing == .unsubscribing else { return [] }
        if entry.followers == 0 {
            channels[channel] = nil
            return []
        }
        entry.standing = .subscribing
        channels[channel] = entry
        return [.subscribe([channel])]
    }

    /// A message was published on `channel`.
    public func message(_ channel: String) -> [Action] {
        guard let entry = channels[channel], entry.followers > 0 else { return [] }
        return [.notify(channel)]
    }
}
