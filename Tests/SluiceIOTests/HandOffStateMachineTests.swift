import Testing

@testable import SluiceIO

/// Every transition of the hand-off's state machine, one at a time. Parking needs a real continuation, so
/// each test that parks runs inside `withUnsafeContinuation` and must end by resuming it (else it hangs:
/// hence the time limits).
@Suite(.timeLimit(.minutes(1))) struct HandOffStateMachineTests {
    struct Refused: Error, Equatable {
        var reason: String
    }

    typealias Machine = HandOffStateMachine

    @Test func addReportsCrossingTheCapacityAndRemoveCountsDown() {
        var machine = Machine(capacity: 10, producerResumesAt: 5)
        #expect(machine.add(10) == false, "at capacity is not over it")
        #expect(machine.add(1) == true)
        #expect(machine.load == 11)
        #expect(machine.remove(11).isEmpty, "no producer waits, so nothing to resume")
        #expect(machine.load == 0)
        #expect(machine.isOpen)
    }

    @Test func aParkedConsumerIsResumedByTheNextWake() async {
        var machine = Machine(capacity: 10, producerResumesAt: 5)
        #expect(machine.wakeConsumer().isEmpty, "a running consumer needs no wake")
        await withUnsafeContinuation { continuation in
            #expect(machine.parkConsumer(continuation, isReady: false, isCancelled: false).isEmpty)
            #expect(machine.hasParkedConsumer)
            _ = machine.add(1)
            let wake = machine.wakeConsumer()
            #expect(wake.resumesConsumer)
            #expect(!machine.hasParkedConsumer)
            #expect(machine.wakeConsumer().isEmpty, "resumed once")
            wake.perform()
        }
    }

    @Test(arguments: ["ready", "finished", "closed", "cancelled"])
    func aConsumerWithSomethingToDoIsNotParked(_ reason: String) async {
        var machine = Machine(capacity: 10, producerResumesAt: 5)
        if reason == "finished" { _ = machine.finish() }
        if reason == "closed" { _ = machine.close(failingProducerWith: .success(())) }
        await withUnsafeContinuation { continuation in
            let wake = machine.parkConsumer(continuation, isReady: reason == "ready", isCancelled: reason == "cancelled")
            #expect(wake.resumesConsumer)
            #expect(!machine.hasParkedConsumer)
            wake.perform()
        }
    }

    @Test func unparkingResumesTheConsumerWhateverTheState() async {
        var machine = Machine(capacity: 10, producerResumesAt: 5)
        #expect(machine.unparkConsumer().isEmpty)
        await withUnsafeContinuation { continuation in
            _ = machine.parkConsumer(continuation, isReady: false, isCancelled: false)
            let wake = machine.unparkConsumer()
            #expect(wake.resumesConsumer)
            #expect(machine.unparkConsumer().isEmpty)
            wake.perform()
        }
    }

    @Test func anIdleCallbackConsumerIsNotifiedOncePerIdling() {
        var machine = Machine(capacity: 10, producerResumesAt: 5, consumerStartsIdle: true)
        var notifications = 0
        machine.wakeConsumer().perform { notifications += 1 }
        machine.wakeConsumer().perform { notifications += 1 }
        #expect(notifications == 1, "a burst of activity notifies once")
        machine.consumerIdle()
        let wake = machine.wakeConsumer()
        #expect(wake.notifiesConsumer)
        #expect(!wake.resumesConsumer)
        wake.perform { notifications += 1 }
        #expect(notifications == 2)
    }

    @Test func aProducerOverTheLimitParksUntilTheLoadFallsToTheResumeMark() async throws {
        var machine = Machine(capacity: 10, producerResumesAt: 5)
        _ = machine.add(12)
        try await withUnsafeThrowingContinuation { continuation in
            let park = machine.parkProducer(
                continuation, unlessLoadAtMost: 5, isCancelled: false, cancelledResult: .failure(CancellationError())
            )
            #expect(park.isEmpty)
            #expect(machine.hasParkedProducer)
            #expect(machine.remove(6).isEmpty, "6 left is above the resume mark")
            let wake = machine.remove(1)
            #expect(wake.resumesProducer != nil)
            #expect(!machine.hasParkedProducer)
            wake.perform()
        }
    }

    @Test func settingTheLoadResumesTheProducerToo() async throws {
        var machine = Machine(capacity: 10, producerResumesAt: 5)
        _ = machine.add(12)
        try await withUnsafeThrowingContinuation { continuation in
            _ = machine.parkProducer(continuation, unlessLoadAtMost: 5, isCancelled: false, cancelledResult: .success(()))
            #expect(machine.setLoad(6).isEmpty)
            let wake = machine.setLoad(0)
            #expect(wake.resumesProducer != nil)
            wake.perform()
        }
    }

    @Test func aProducerWithinTheLimitOrFinishedGoesOnAtOnce() async throws {
        var machine = Machine(capacity: 10, producerResumesAt: 5)
        _ = machine.add(8)
        try await withUnsafeThrowingContinuation { continuation in
            let park = machine.parkProducer(continuation, unlessLoadAtMost: 8, isCancelled: false, cancelledResult: .success(()))
            #expect(park.resumesProducer.map { (try? $0.get()) != nil } == true)
            park.perform()
        }
        _ = machine.finish()
        try await withUnsafeThrowingContinuation { continuation in
            let park = machine.parkProducer(continuation, unlessLoadAtMost: 0, isCancelled: false, cancelledResult: .success(()))
            #expect(park.resumesProducer != nil, "a finished hand-off holds no producer")
            park.perform()
        }
    }

    @Test func aCancelledProducerGetsItsCancellationResult() async {
        var machine = Machine(capacity: 10, producerResumesAt: 5)
        _ = machine.add(20)
        await #expect(throws: CancellationError.self) {
            try await withUnsafeThrowingContinuation { continuation in
                machine.parkProducer(
                    continuation, unlessLoadAtMost: 5, isCancelled: true, cancelledResult: .failure(CancellationError())
                ).perform()
            }
        }
        await #expect(throws: Refused(reason: "cancelled")) {
            try await withUnsafeThrowingContinuation { continuation in
                _ = machine.parkProducer(continuation, unlessLoadAtMost: 5, isCancelled: false, cancelledResult: .success(()))
                machine.unparkProducer(with: .failure(Refused(reason: "cancelled"))).perform()
            }
        }
        #expect(machine.unparkProducer(with: .success(())).isEmpty)
    }

    @Test func closingFailsTheWaitingProducerAndEveryLaterOne() async {
        var machine = Machine(capacity: 10, producerResumesAt: 5)
        _ = machine.add(20)
        await #expect(throws: Refused(reason: "gone")) {
            try await withUnsafeThrowingContinuation { continuation in
                _ = machine.parkProducer(continuation, unlessLoadAtMost: 5, isCancelled: false, cancelledResult: .success(()))
                let closed = machine.close(failingProducerWith: .failure(Refused(reason: "gone")))
                #expect(closed?.resumesProducer != nil)
                closed?.perform()
            }
        }
        #expect(machine.isClosed && !machine.isOpen)
        #expect(machine.close(failingProducerWith: .success(())) == nil, "a hand-off closes once")
        #expect(machine.finish() == nil, "a closed hand-off cannot finish")
        _ = machine.setLoad(0)
        await #expect(throws: Refused(reason: "gone"), "closed outranks room and cancellation") {
            try await withUnsafeThrowingContinuation { continuation in
                machine.parkProducer(continuation, unlessLoadAtMost: 5, isCancelled: true, cancelledResult: .success(())).perform()
            }
        }
    }

    @Test func closingResumesAParkedConsumer() async {
        var machine = Machine(capacity: 10, producerResumesAt: 5)
        await withUnsafeContinuation { continuation in
            _ = machine.parkConsumer(continuation, isReady: false, isCancelled: false)
            let closed = machine.close(failingProducerWith: .success(()))
            #expect(closed?.resumesConsumer == true)
            closed?.perform()
        }
    }

    @Test func finishingWakesAParkedConsumerOnce() async {
        var machine = Machine(capacity: 10, producerResumesAt: 5)
        await withUnsafeContinuation { continuation in
            _ = machine.parkConsumer(continuation, isReady: false, isCancelled: false)
            let finished = machine.finish()
            #expect(finished?.resumesConsumer == true)
            #expect(machine.isFinished && !machine.isOpen)
            #expect(machine.finish() == nil, "a hand-off finishes once")
            finished?.perform()
        }
        var idle = Machine(capacity: 10, producerResumesAt: 5, consumerStartsIdle: true)
        #expect(idle.finish()?.notifiesConsumer == true, "an idle loop is told to drain and end")
    }

    @Test func finishingLetsAWaitingProducerGo() async throws {
        var machine = Machine(capacity: 10, producerResumesAt: 5)
        _ = machine.add(20)
        try await withUnsafeThrowingContinuation { continuation in
            _ = machine.parkProducer(continuation, unlessLoadAtMost: 5, isCancelled: false, cancelledResult: .success(()))
            let finished = machine.finish()
            #expect(finished?.resumesProducer.map { (try? $0.get()) != nil } == true)
            finished?.perform()
        }
    }

    @Test func mergedWakeupsPerformEveryOne() async throws {
        var machine = Machine(capacity: 10, producerResumesAt: 5)
        _ = machine.add(20)
        try await withUnsafeThrowingContinuation { producer in
            _ = machine.parkProducer(producer, unlessLoadAtMost: 5, isCancelled: false, cancelledResult: .success(()))
            var wakeups = HandOffWakeups()
            wakeups.merge(machine.setLoad(0))
            wakeups.merge(machine.wakeConsumer())
            #expect(wakeups.resumesProducer != nil)
            #expect(!wakeups.resumesConsumer)
            wakeups.perform()
        }
    }
}
