import Testing

@testable import SluiceTransport

@Suite struct HTTP1ConnectionStateMachineTests {
    typealias Machine = HTTP1ConnectionStateMachine

    private func machine() -> Machine {
        Machine(limits: .init(maxHeaderBytes: 100, maxBodyBytes: 200))
    }

    private func request(method: String = "GET", keepAlive: Bool = true, versionMinor: Int = 1, headers: [(String, String)] = [])
        -> HTTP1Request
    {
        var request = HTTP1Request()
        request.method = method
        request.target = "/"
        request.keepAlive = keepAlive
        request.versionMinor = versionMinor
        request.headers = headers.map { (name: $0.0, value: $0.1) }
        return request
    }

    @Test func keepAliveRequestsAlternateReadingAndResponding() {
        var machine = machine()
        #expect(machine.mayParse)
        let result1 = machine.headReceived(request(), contentLength: nil)
        #expect(result1 == .none)
        machine.requestReceived(request())
        #expect(machine.state == .responding(last: false))
        #expect(!machine.mayParse)
        #expect(machine.isResponding)
        #expect(!machine.respondingLast)
        #expect(!machine.mayCloseWhenIdle)
        let result2 = machine.responseFinished(closesConnection: false)
        #expect(result2 == .readNext)
        #expect(machine.state == .reading)
        #expect(machine.mayCloseWhenIdle)
    }

    @Test func connectionCloseAndCONNECTMakeTheLastResponse() {
        var close = machine()
        close.requestReceived(request(keepAlive: false))
        #expect(close.state == .responding(last: true))
        #expect(close.respondingLast)
        let result3 = close.responseFinished(closesConnection: false)
        #expect(result3 == .endConnection)
        #expect(close.state == .lingering)

        var connect = machine()
        connect.requestReceived(request(method: "CONNECT"))
        #expect(connect.state == .responding(last: true))
    }

    @Test func aResponseThatEndsTheConnectionEndsIt() {
        var machine = machine()
        machine.requestReceived(request())
        let result4 = machine.responseFinished(closesConnection: true)
        #expect(result4 == .endConnection)
        #expect(machine.state == .lingering)
        #expect(machine.mayCloseWhenIdle)
    }

    @Test func parseFailuresAnswerAndClose() {
        var malformed = machine()
        let (status400, text400) = malformed.parseFailed(.malformed("invalid method"))
        #expect(status400 == 400)
        #expect(text400 == "Malformed HTTP/1.1 request (invalid method).\n")
        #expect(malformed.state == .responding(last: true))
        var headers = machine()
        let result5 = headers.parseFailed(.headersTooLarge)
        #expect(result5.status == 431)
        var body = machine()
        let (status, text) = body.parseFailed(.bodyTooLarge)
        #expect(status == 413)
        #expect(text.contains("200 bytes"))
    }

    // MARK: Expect

    @Test func expectations() {
        var old = machine()
        let result6 = old.headReceived(request(versionMinor: 0, headers: [("expect", "100-continue")]), contentLength: 5)
        #expect(result6 == .none)

        var continues = machine()
        let result7 = continues.headReceived(request(headers: [("expect", "100-Continue")]), contentLength: 5)
        #expect(result7 == .routeBeforeBody(sendContinue: true))
        #expect(continues.state == .reading)
        var empty = machine()
        let result8 = empty.headReceived(request(headers: [("expect", "100-continue")]), contentLength: 0)
        #expect(result8 == .routeBeforeBody(sendContinue: false))

        var refused = machine()
        _ = refused.headReceived(request(headers: [("expect", "100-continue")]), contentLength: 5)
        refused.refusedBeforeBody()
        #expect(refused.state == .responding(last: true))

        var unknown = machine()
        let result9 = unknown.headReceived(request(headers: [("expect", "teapot")]), contentLength: 5)
        #expect(result9 == .rejectExpectation(body: "Unsupported Expect: teapot. Only 100-continue is understood.\n"))
        #expect(unknown.state == .responding(last: true))
    }

    // MARK: Drain

    @Test func drainEndsAnIdleConnectionAtOnce() {
        var machine = machine()
        let result10 = machine.beginDrain()
        #expect(result10)
        #expect(machine.state == .lingering)
        let result11 = machine.beginDrain()
        #expect(!result11)
    }

    @Test func drainMakesTheResponseInFlightTheLast() {
        var machine = machine()
        machine.requestReceived(request())
        let result12 = machine.beginDrain()
        #expect(!result12)
        #expect(machine.state == .responding(last: true))
        #expect(machine.respondingLast)
        let result13 = machine.responseFinished(closesConnection: false)
        #expect(result13 == .endConnection)
    }

    // MARK: Backlog

    @Test func readingPausesAndResumesWhileRequestsAreTaken() {
        var machine = machine()
        let result14 = machine.backlogDrained()
        #expect(!result14)
        machine.backlogFull()
        #expect(machine.readingPaused)
        machine.requestReceived(request())
        let result15 = machine.backlogDrained()
        #expect(result15)
        #expect(!machine.readingPaused)
    }

    @Test func readingStaysPausedAfterTheLastRequest() {
        var machine = machine()
        machine.backlogFull()
        machine.requestReceived(request(keepAlive: false))
        let result16 = machine.backlogDrained()
        #expect(!result16)
        #expect(machine.readingPaused)
    }

    // MARK: Close

    @Test func closeOnceFromAnyState() {
        let setUps: [(inout Machine) -> Void] = [{ _ in }, { $0.requestReceived(self.request()) }, { _ = $0.beginDrain() }]
        for setUp in setUps {
            var machine = machine()
            setUp(&machine)
            let result17 = machine.close()
            #expect(result17)
            #expect(machine.state == .closed)
            let result18 = machine.close()
            #expect(!result18)
            let result19 = machine.beginDrain()
            #expect(!result19)
            #expect(!machine.mayParse)
            #expect(!machine.mayCloseWhenIdle)
        }
    }
}
