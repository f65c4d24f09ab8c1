import Testing

@testable import SluiceTransport

@Suite struct ServerConnectionStateMachineTests {
    typealias Machine = ServerConnectionStateMachine

    private static let preface = Machine.clientPreface

    private func receive(_ machine: inout Machine, _ bytes: [UInt8]) -> Machine.ReceiveAction {
        bytes.withUnsafeBytes { machine.received($0) }
    }

    @Test func startsByDetectionOrHandshake() {
        #expect(Machine(tls: false).state == .detectingProtocol(prefaceBytesMatched: 0, noticeQueued: false))
        let tls = Machine(tls: true)
        #expect(tls.state == .tlsHandshake(noticeQueued: false))
        #expect(tls.isHandshaking)
        #expect(!tls.speaksHTTP2)
        #expect(!tls.isClosed)
    }

    // MARK: Protocol detection

    @Test func prefaceInOneReadStartsHTTP2() {
        var machine = Machine(tls: false)
        let result1 = receive(&machine, Self.preface + [0, 0, 0])
        #expect(result1 == .deliver)
        #expect(machine.state == .http2)
        #expect(machine.speaksHTTP2)
        // Later bytes go to nghttp2 unexamined.
        let result2 = receive(&machine, Array("GET / HTTP/1.1".utf8))
        #expect(result2 == .deliver)
    }

    @Test func prefaceByteByByte() {
        var machine = Machine(tls: false)
        for (index, byte) in Self.preface.enumerated() {
            let result3 = receive(&machine, [byte])
            #expect(result3 == .deliver)
            if index < Self.preface.count - 1 {
                #expect(machine.state == .detectingProtocol(prefaceBytesMatched: index + 1, noticeQueued: false))
                #expect(!machine.speaksHTTP2)
            }
        }
        #expect(machine.state == .http2)
    }

    @Test func divergingBytesHandOverToHTTP1WithEverythingRead() {
        var machine = Machine(tls: false)
        let result4 = receive(&machine, Array("PR".utf8))
        #expect(result4 == .deliver)
        let result5 = receive(&machine, Array("OPFIND / HTTP/1.1\r\n".utf8))
        #expect(result5 == .switchToHTTP1(replaying: Array("PROPFIND / HTTP/1.1\r\n".utf8)))
        #expect(machine.state == .handedToHTTP1)
        #expect(machine.isClosed)
        let result6 = machine.close()
        #expect(!result6)
        let result7 = machine.goAway()
        #expect(result7 == .none)
        let result8 = machine.shutdownNotice()
        #expect(!result8)
    }

    // MARK: TLS

    @Test func alpnDecidesTheProtocol() {
        var h2 = Machine(tls: true)
        let result9 = h2.handshakeCompleted(alpnH2: true)
        #expect(result9)
        #expect(h2.state == .http2)
        #expect(!h2.isHandshaking)
        var http1 = Machine(tls: true)
        let result10 = http1.handshakeCompleted(alpnH2: false)
        #expect(!result10)
        #expect(http1.state == .handedToHTTP1)
    }

    @Test func noticeQueuedDuringTheHandshakeStartsHTTP2Draining() {
        var machine = Machine(tls: true)
        let result11 = machine.shutdownNotice()
        #expect(result11)
        #expect(machine.state == .tlsHandshake(noticeQueued: true))
        #expect(machine.isDraining)
        let result12 = machine.shutdownNotice()
        #expect(!result12)
        let result13 = machine.handshakeCompleted(alpnH2: true)
        #expect(result13)
        #expect(machine.state == .http2Draining)
    }

    @Test func noticeQueuedDuringDetectionStartsHTTP2Draining() {
        var machine = Machine(tls: false)
        let result14 = receive(&machine, Array(Self.preface.prefix(4)))
        #expect(result14 == .deliver)
        let result15 = machine.shutdownNotice()
        #expect(result15)
        #expect(machine.state == .detectingProtocol(prefaceBytesMatched: 4, noticeQueued: true))
        let result16 = receive(&machine, Array(Self.preface.dropFirst(4)))
        #expect(result16 == .deliver)
        #expect(machine.state == .http2Draining)
    }

    // MARK: Drain and GOAWAY

    @Test func shutdownNoticeThenFinalGoAwayOnceTheLastStreamIsDone() {
        var machine = Machine(tls: false)
        _ = receive(&machine, Self.preface)
        let result17 = machine.willWrite(hasOpenStreams: false)
        #expect(!result17)
        let result18 = machine.shutdownNotice()
        #expect(result18)
        #expect(machine.state == .http2Draining)
        #expect(machine.isDraining)
        let result19 = machine.shutdownNotice()
        #expect(!result19)
        let result20 = machine.willWrite(hasOpenStreams: true)
        #expect(!result20)
        #expect(machine.state == .http2Draining)
        let result21 = machine.willWrite(hasOpenStreams: false)
        #expect(result21)
        #expect(machine.state == .http2FinalGoAwaySent)
        let result22 = machine.willWrite(hasOpenStreams: false)
        #expect(!result22)
        let result23 = machine.goAway()
        #expect(result23 == .flush)
    }

    @Test func goAwayFromOpenOrDraining() {
        var open = Machine(tls: false)
        _ = receive(&open, Self.preface)
        let result24 = open.goAway()
        #expect(result24 == .submitFinalGoAway)
        #expect(open.state == .http2FinalGoAwaySent)
        #expect(open.isDraining)
        let result25 = open.goAway()
        #expect(result25 == .flush)

        var draining = Machine(tls: false)
        _ = receive(&draining, Self.preface)
        _ = draining.shutdownNotice()
        let result26 = draining.goAway()
        #expect(result26 == .submitFinalGoAway)
        #expect(draining.state == .http2FinalGoAwaySent)
    }

    @Test func goAwayBeforeTheProtocolIsKnownCloses() {
        var detecting = Machine(tls: false)
        let result27 = detecting.goAway()
        #expect(result27 == .close)
        var handshaking = Machine(tls: true)
        let result28 = handshaking.goAway()
        #expect(result28 == .close)
    }

    // MARK: Close

    @Test func closeOnceFromAnyOpenState() {
        var detecting = Machine(tls: false)
        let result29 = detecting.close()
        #expect(result29)
        #expect(detecting.state == .closed)
        let result30 = detecting.close()
        #expect(!result30)
        let result31 = detecting.goAway()
        #expect(result31 == .none)
        let result32 = detecting.shutdownNotice()
        #expect(!result32)
        #expect(!detecting.speaksHTTP2)

        var http2 = Machine(tls: false)
        _ = receive(&http2, Self.preface)
        _ = http2.goAway()
        let result33 = http2.close()
        #expect(result33)
        #expect(http2.isClosed)
        #expect(!http2.isDraining)
    }
}
