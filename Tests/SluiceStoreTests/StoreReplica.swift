import Logging
import SluiceIO
import SluiceStore

/// A replica's Redis store on a loop of its own, against a test `redis-server`: enough of a replica to claim, fence and
/// hand off streams with another one.
final class StoreReplica: Sendable {
    let loop: EventLoop
    let store: RedisStreamStore

    init(_ name: String, url: String) throws {
        loop = try EventLoop(index: 0)
        var configuration = RedisStreamStore.Configuration(
            endpoint: try RedisEndpoint(url: url), replicaID: name, retention: .seconds(60), replayBufferBytes: 1 << 20)
        configuration.leaseDuration = .seconds(30)
        configuration.leaseRenewal = .seconds(10)
        store = RedisStreamStore(configuration: configuration, loops: [loop], logger: Logger(label: name))
        loop.start()
        store.start()
    }

    /// Replica `name` on `redis`, once its store is up (reads before a connection is up fail at once: a reader does not
    /// wait out an outage).
    static func started(_ name: String, on redis: RedisTestServer) async throws -> StoreReplica {
        let replica = try StoreReplica(name, url: redis.url)
        while !replica.store.isUp { try await Task.sleep(for: .milliseconds(5)) }
        return replica
    }

    func stop() {
        store.close()
        loop.stop()
    }
}
