import Logging
import SluiceIO

/// One event loop's subscriber connection: every follower on the loop waits on it for its stream's notifications
/// (`RedisKeys.appended`), so a replica's Redis connections stay two per loop however many remote readers it
/// serves. The shell of `RedisSubscriptionStateMachine`. Loop-confined.
final class RedisSubscriber: @unchecked Sendable {
    let loop: EventLoop
    private var connection: RedisConnection!
    private var machine = RedisSubscriptionStateMachine()
    /// The watches waiting on each channel.
    private var watches: [String: [ObjectIdentifier: RedisStreamLogWatch]] = [:]

    init(loop: EventLoop, configuration: RedisStreamStore.Configuration, logger: Logger) {
        self.loop = loop
        connection = RedisConnection(
            loop: loop, endpoint: configuration.endpoint, maxQueuedBytes: configuration.maxQueuedBytes,
            backoff: configuration.backoff, logger: logger,
            // Only SUBSCRIBE and UNSUBSCRIBE go out on this connection, outside the queue.
            onReply: { _, _ in }, onDropped: { _ in },
            onUpChanged: { [unowned self] up in
                if up {
                    perform(machine.connectionUp())
                } else {
                    machine.connectionLost()
                }
            },
            onPush: { [unowned self] reply in pushed(reply) })
    }

    func start() {
        connection.start()
    }

    func close() {
        connection.close()
    }

    /// A watch of `streamID`'s notifications (from any thread); it subscribes on the loop.
    func watch(_ streamID: String) -> RedisStreamLogWatch {
        let watch = RedisStreamLogWatch(subscriber: self, channel: RedisKeys.appended(streamID))
        if loop.inEventLoop {
            add(watch)
        } else {
            loop.execute { self.add(watch) }
        }
        return watch
    }

    private func add(_ watch: RedisStreamLogWatch) {
        watches[watch.channel, default: [:]][ObjectIdentifier(watch)] = watch
        perform(machine.follow(watch.channel))
    }

    /// `watch` was closed.
    func remove(_ watch: RedisStreamLogWatch) {
        guard watches[watch.channel]?.removeValue(forKey: ObjectIdentifier(watch)) != nil else { return }
        if watches[watch.channel]?.isEmpty == true { watches[watch.channel] = nil }
        perform(machine.unfollow(watch.channel))
    }

    /// `ended`: the notification announced the stream's end.
    private func perform(_ actions: [RedisSubscriptionStateMachine.Action], ended: Bool = false) {
        for action in actions {
            switch action {
            case .subscribe(let channels):
                connection.sendPubSub(["SUBSCRIBE"] + channels)
            case .unsubscribe(let channels):
                connection.sendPubSub(["UNSUBSCRIBE"] + channels)
            case .notify(let channel):
                guard let waiting = watches[channel] else { continue }
                for watch in waiting.values { watch.notify(ended: ended) }
            }
        }
    }

    /// `["message", channel, "<last seq>" | "end <last seq>"]`, or a confirmation `["subscribe" | "unsubscribe", channel, count]`.
    private func pushed(_ reply: RedisReply) {
        guard case .array(let parts) = reply, parts.count == 3, case .string(let kind) = parts[0], case .string(let name) = parts[1]
        else { return }
        let channel = String(decoding: name, as: UTF8.self)
        switch String(decoding: kind, as: UTF8.self) {
        case "message":
            let ended = if case .string(let payload) = parts[2] { payload.starts(with: "end".utf8) } else { false }
            perform(machine.message(channel), ended: ended)
        case "subscribe": perform(machine.subscribed(channel))
        case "unsubscribe": perform(machine.unsubscribed(channel))
        default: break
        }
    }
}
