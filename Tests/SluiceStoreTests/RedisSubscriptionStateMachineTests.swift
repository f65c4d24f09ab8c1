import SluiceStore
import Testing

@Suite struct RedisSubscriptionStateMachineTests {
    typealias Machine = RedisSubscriptionStateMachine

    func connected() -> Machine {
        var machine = Machine()
        #expect(machine.connectionUp() == [])
        return machine
    }

    @Test func followersOfOneChannelShareOneSubscription() {
        var machine = connected()
        #expect(machine.follow("a") == [.subscribe(["a"])])
        #expect(machine.follow("a") == [])
        #expect(machine.follow("a") == [])
        #expect(machine.followers(of: "a") == 3)
        #expect(machine.subscribed("a") == [.notify("a")])
        #expect(machine.message("a") == [.notify("a")])
        #expect(machine.unfollow("a") == [])
        #expect(machine.unfollow("a") == [])
        #expect(machine.unfollow("a") == [.unsubscribe(["a"])])
        #expect(machine.message("a") == [])
        #expect(machine.unsubscribed("a") == [])
        #expect(machine.trackedCount == 0)
        // One unfollow too many changes nothing.
        #expect(machine.unfollow("a") == [])
    }

    @Test func aFollowWhileItsUnsubscribeIsInFlightSubscribesAgainAfterTheConfirmation() {
        var machine = connected()
        _ = machine.follow("a")
        _ = machine.subscribed("a")
        #expect(machine.unfollow("a") == [.unsubscribe(["a"])])
        #expect(machine.follow("a") == [])
        #expect(machine.unsubscribed("a") == [.subscribe(["a"])])
        #expect(machine.subscribed("a") == [.notify("a")])
        #expect(machine.subscribedChannels == ["a"])
    }

    @Test func anUnfollowWhileItsSubscribeIsInFlightUnsubscribesAfterTheConfirmation() {
        var machine = connected()
        #expect(machine.follow("a") == [.subscribe(["a"])])
        #expect(machine.unfollow("a") == [])
        #expect(machine.subscribed("a") == [.unsubscribe(["a"])])
        #expect(machine.unsubscribed("a") == [])
        #expect(machine.trackedCount == 0)
    }

    @Test func followsWhileDownWaitForTheConnection() {
        var machine = Machine()
        #expect(machine.follow("b") == [])
        #expect(machine.follow("a") == [])
        #expect(machine.follow("c") == [])
        #expect(machine.unfollow("c") == [])
        #expect(machine.connectionUp() == [.subscribe(["a", "b"])])
        #expect(machine.subscribed("a") == [.notify("a")])
        #expect(machine.subscribed("b") == [.notify("b")])
        #expect(machine.subscribedChannels == ["a", "b"])
    }

    @Test func aReconnectResubscribesEveryFollowedChannelInOneCommand() {
        var machine = connected()
        _ = machine.follow("a")
        _ = machine.follow("b")
        _ = machine.follow("c")
        _ = machine.subscribed("a")
        _ = machine.subscribed("b")
        #expect(machine.unfollow("b") == [.unsubscribe(["b"])])
        machine.connectionLost()
        // Replies of the old connection never come; stale confirmations are ignored.
        #expect(machine.subscribed("c") == [])
        #expect(machine.subscribedChannels.isEmpty)
        #expect(machine.follow("d") == [])
        #expect(machine.connectionUp() == [.subscribe(["a", "c", "d"])])
        #expect(machine.unsubscribed("b") == [])
        // Each confirmation wakes its followers: they read what was published while the connection was down.
        #expect(machine.subscribed("a") == [.notify("a")])
        #expect(machine.subscribed("c") == [.notify("c")])
        #expect(machine.subscribed("d") == [.notify("d")])
        #expect(machine.trackedCount == 3)
    }

    @Test func messagesForChannelsNobodyFollowsAreIgnored() {
        var machine = connected()
        #expect(machine.message("x") == [])
        _ = machine.follow("a")
        _ = machine.subscribed("a")
        #expect(machine.message("x") == [])
        #expect(machine.subscribed("x") == [])
        #expect(machine.unsubscribed("x") == [])
    }
}
