import SluiceWire
import Testing

@testable import SluiceTransport

@Suite struct HTTP2StreamStateMachineTests {
    typealias Machine = HTTP2StreamStateMachine

    private func machine(maxHeaderListSize: Int = 16 * 1024, maxMessageSize: Int = 64) -> Machine {
        Machine(limits: .init(maxHeaderListSize: maxHeaderListSize, maxMessageSize: maxMessageSize))
    }

    /// A machine past its headers: `headers` received, then routed as the flags say.
    private func routed(
        _ headers: [(String, String)], httpRoute: Bool = false, rpcRouteEnforcesDeadline: Bool? = false
    ) -> (Machine, Machine.HeadersAction) {
        var machine = machine()
        for (name, value) in headers {
            let accepted = machine.receiveHeader(name: name, value: value)
            #expect(accepted)
        }
        let action = machine.headersComplete(httpRoute: httpRoute, rpcRouteEnforcesDeadline: rpcRouteEnforcesDeadline)
        return (machine, action)
    }

    private static let grpcCall = [(":method", "POST"), (":path", "/pkg.Service/Method"), ("content-type", "application/grpc")]
    private static let connectCall = [(":method", "POST"), (":path", "/pkg.Service/Method"), ("content-type", "application/connect+json")]

    private func receive(_ machine: inout Machine, _ bytes: [UInt8]) -> Machine.DataAction {
        bytes.withUnsafeBytes { machine.receiveData($0) }
    }

    private func envelope(_ text: String) -> [UInt8] {
        EnvelopeEncoder.encode(Array(text.utf8))
    }

    // MARK: receivingHeaders

    @Test func headersAreCollectedAndPseudoHeadersKeptApart() {
        var machine = machine()
        let result2 = machine.receiveHeader(name: ":method", value: "POST")
        #expect(result2)
        let result3 = machine.receiveHeader(name: ":path", value: "/a?b=1")
        #expect(result3)
        let result4 = machine.receiveHeader(name: ":authority", value: "host")
        #expect(result4)
        let result5 = machine.receiveHeader(name: "content-type", value: "application/grpc")
        #expect(result5)
        let result6 = machine.receiveHeader(name: "x-key", value: "v")
        #expect(result6)
        #expect(machine.state == .receivingHeaders)
        #expect(machine.method == "POST")
        #expect(machine.path == "/a?b=1")
        #expect(machine.routePath == "/a")
        #expect(machine.headers.map(\.name) == ["content-type", "x-key"])
    }

    @Test func headerListOverTheLimitIsRefused() {
        // Each field counts name + value + 32 (RFC 7541 §4.1).
        var machine = machine(maxHeaderListSize: 80)
        let result7 = machine.receiveHeader(name: "aaaa", value: "bbbb")
        #expect(result7)  // 40
        let result8 = machine.receiveHeader(name: "cccc", value: "dddd")
        #expect(result8)  // 80
        let result9 = machine.receiveHeader(name: "e", value: "")
        #expect(!result9)  // 113
    }

    @Test func httpRouteStartsCollectingTheBody() {
        let (machine, action) = routed([(":method", "GET"), (":path", "/healthz")], httpRoute: true, rpcRouteEnforcesDeadline: nil)
        #expect(action == .startHTTP)
        #expect(machine.state == .receivingRequest(.http))
    }

    @Test func nonPOSTIsAnswered405() {
        let (machine, action) = routed([(":method", "GET"), (":path", "/pkg.Service/Method")])
        #expect(action == .respondPlain)
        #expect(machine.state == .respondingPlain)
        #expect(machine.plainResponseHead.first == .init(name: ":status", value: "405"))
        #expect(machine.plainResponseHead.contains(.init(name: "allow", value: "POST")))
        #expect(String(decoding: machine.plainBody, as: UTF8.self).contains("GET is not allowed"))
    }

    @Test func unsupportedContentTypeIsAnswered415() {
        let (machine, action) = routed([(":method", "POST"), (":path", "/pkg.Service/Method"), ("content-type", "text/plain")])
        #expect(action == .respondPlain)
        #expect(machine.plainResponseHead.first == .init(name: ":status", value: "415"))
        #expect(machine.plainResponseHead.map(\.name).contains("accept-post"))
    }

    @Test func grpcAndConnectCallsStart() {
        let (grpc, grpcAction) = routed(Self.grpcCall)
        #expect(grpcAction == .startRPC(.grpc, deadline: nil))
        #expect(grpc.state == .receivingRequest(.rpc(.grpc)))
        let (connect, connectAction) = routed(Self.connectCall + [("connect-timeout-ms", "250")], rpcRouteEnforcesDeadline: true)
        #expect(
            connectAction
                == .startRPC(
                    .connect,
                    deadline: .init(
                        header: "connect-timeout-ms", value: "250", timeout: .milliseconds(250), backstop: RPCRouter.deadlineBackstop)
                )
        )
        #expect(connect.state == .receivingRequest(.rpc(.connect)))
    }

    @Test func grpcTimeoutArmsADeadlineWithoutBackstopUnlessTheRouteEnforcesIt() {
        let (_, action) = routed(Self.grpcCall + [("grpc-timeout", "2S")])
        #expect(action == .startRPC(.grpc, deadline: .init(header: "grpc-timeout", value: "2S", timeout: .seconds(2), backstop: .zero)))
    }

    @Test func unknownEncodingUnknownMethodAndBadTimeoutFailTheCall() {
        let (encoding, encodingAction) = routed(Self.grpcCall + [("grpc-encoding", "br")])
        guard case .failRPC(.grpc, .unimplemented, let message) = encodingAction else {
            Issue.record("expected UNIMPLEMENTED, got \(encodingAction)")
            return
        }
        #expect(message.contains("'br'") && message.contains("gzip,identity"))
        #expect(encoding.state == .answeredEarly(.rpc(.grpc)))

        let (unknown, unknownAction) = routed(Self.connectCall, rpcRouteEnforcesDeadline: nil)
        #expect(unknownAction == .failRPC(.connect, .unimplemented, "unknown method /pkg.Service/Method: this server has no such RPC"))
        #expect(unknown.state == .answeredEarly(.rpc(.connect)))

        let (timeout, timeoutAction) = routed(Self.grpcCall + [("grpc-timeout", "soon")])
        #expect(timeoutAction == .failRPC(.grpc, .invalidArgument, "malformed grpc-timeout header 'soon'"))
        #expect(timeout.state == .answeredEarly(.rpc(.grpc)))
    }

    @Test func preflightIsAnswered204WithoutABody() {
        var machine = machine()
        _ = machine.receiveHeader(name: ":method", value: "OPTIONS")
        #expect(machine.answerPreflight([("access-control-allow-origin", "https://app.example")]) == .respondPlain)
        let head = machine.responseHead(trailersOnlyStatus: nil, httpHead: nil)
        #expect(!head.withBody)
        #expect(
            head.fields == [.init(name: ":status", value: "204"), .init(name: "access-control-allow-origin", value: "https://app.example")])
    }

    @Test func grpcWebTextRequestIsBase64AndEndsWithTheStream() {
        var (machine, action) = routed([
            (":method", "POST"), (":path", "/pkg.Service/Method"), ("content-type", "application/grpc-web-text+json"),
        ])
        #expect(action == .startRPC(.grpcWebText, deadline: nil))
        let text = Base64.encode(envelope("{}"))
        #expect(receive(&machine, Array(text.prefix(3))) == .none)
        #expect(receive(&machine, Array(text.dropFirst(3))) == .none)
        guard case .runRPCHandler(let message) = machine.endOfRequest() else {
            Issue.record("the handler should run")
            return
        }
        #expect(message == Array("{}".utf8))
        #expect(machine.outputReady() == .submitHeadIfReady(trailersOnlyAllowed: false))
        #expect(machine.bodyEnd(status: (.ok, "")) == .endStream, "the status is the body's last frame, not trailers")
        var (bad, _) = routed([(":method", "POST"), (":path", "/pkg.Service/Method"), ("content-type", "application/grpc-web-text+json")])
        #expect(receive(&bad, Array("!!!!".utf8)) == .fail(.invalidArgument, "a grpc-web-text request body is not valid base64"))
    }

    @Test func endDuringHeadersLeavesNothingToStart() {
        var machine = machine()
        let result10 = machine.receiveHeader(name: ":method", value: "POST")
        #expect(result10)
        let result11 = machine.end()
        #expect(!result11)
        #expect(machine.state == .answeredEarly(nil))
        let result12 = machine.receiveHeader(name: ":path", value: "/pkg.Service/Method")
        #expect(result12)
        let result13 = machine.headersComplete(httpRoute: false, rpcRouteEnforcesDeadline: false)
        #expect(result13 == .none)
        #expect(machine.outputReady() == .none)
        guard case .none = machine.endOfRequest() else {
            Issue.record("an ended stream runs nothing")
            return
        }
    }

    // MARK: receivingRequest

    @Test func rpcMessageRunsTheHandlerAtEndOfRequest() {
        var (machine, _) = routed(Self.grpcCall)
        let bytes = envelope("{}")
        let result14 = receive(&machine, Array(bytes.prefix(3)))
        #expect(result14 == .none)
        let result15 = receive(&machine, Array(bytes.dropFirst(3)))
        #expect(result15 == .none)
        guard case .runRPCHandler(let message) = machine.endOfRequest() else {
            Issue.record("the handler should run")
            return
        }
        #expect(message == Array("{}".utf8))
        #expect(machine.state == .handling(.rpc(.grpc)))
        #expect(machine.requestEnded)
    }

    @Test func secondMessageFailsTheCallAndLaterBytesAreIgnored() {
        var (machine, _) = routed(Self.grpcCall)
        let result16 = receive(&machine, envelope("1") + envelope("2"))
        #expect(result16 == .fail(.invalidArgument, "this method takes exactly one request message, but the client sent more"))
        #expect(machine.state == .answeredEarly(.rpc(.grpc)))
        let result17 = receive(&machine, envelope("3"))
        #expect(result17 == .none)
        guard case .none = machine.endOfRequest() else {
            Issue.record("a failed call runs nothing")
            return
        }
        #expect(machine.requestEnded)
    }

    @Test func oversizedOrCompressedMessageFailsTheCall() {
        var (machine, _) = routed(Self.grpcCall)
        guard case .fail(.resourceExhausted, _) = receive(&machine, [0, 0, 0, 1, 0]) else {
            Issue.record("expected RESOURCE_EXHAUSTED")
            return
        }
        var (compressed, _) = routed(Self.grpcCall)
        guard case .fail(.internal, let message) = receive(&compressed, [1, 0, 0, 0, 0]) else {
            Issue.record("expected INTERNAL: a message flagged compressed without grpc-encoding")
            return
        }
        #expect(message.contains("grpc-encoding"))
    }

    @Test func gzipRequestIsInflatedWithinTheMessageLimit() {
        var (machine, action) = routed(Self.grpcCall + [("grpc-encoding", "gzip")])
        #expect(action == .startRPC(.grpc, deadline: nil))
        #expect(machine.encodings == EncodingNegotiation(request: .gzip, response: .identity))
        let message = Array(#"{"model":"m"}"#.utf8)
        #expect(receive(&machine, EnvelopeEncoder.encode(Gzip.compress(message), flags: .compressed)) == .none)
        guard case .runRPCHandler(let received) = machine.endOfRequest() else {
            Issue.record("the handler should run")
            return
        }
        #expect(received == message)

        // 64 bytes is this machine's limit: 65 zeros compress to far fewer, and are refused while inflating.
        var (bomb, _) = routed(Self.connectCall + [("connect-content-encoding", "gzip")])
        let zeros = Gzip.compress([UInt8](repeating: 0, count: 65))
        #expect(zeros.count < 64)
        guard case .fail(.resourceExhausted, let reason) = receive(&bomb, EnvelopeEncoder.encode(zeros, flags: .compressed)) else {
            Issue.record("expected RESOURCE_EXHAUSTED")
            return
        }
        #expect(reason.contains("inflates beyond the maximum message size of 64 bytes"))
    }

    @Test func missingOrTruncatedMessageFailsAtEndOfRequest() {
        var (none, _) = routed(Self.grpcCall)
        guard case .fail(.invalidArgument, let message) = none.endOfRequest() else {
            Issue.record("expected INVALID_ARGUMENT")
            return
        }
        #expect(message.contains("sent none"))
        #expect(none.state == .answeredEarly(.rpc(.grpc)))

        var (partial, _) = routed(Self.grpcCall)
        let result18 = receive(&partial, Array(envelope("hello").prefix(7)))
        #expect(result18 == .none)
        guard case .fail(.invalidArgument, let truncated) = partial.endOfRequest() else {
            Issue.record("expected INVALID_ARGUMENT")
            return
        }
        #expect(truncated.contains("ended inside a message"))
    }

    @Test func httpBodyIsCollectedAndHandedToTheHandler() {
        var (machine, _) = routed([(":method", "PUT"), (":path", "/upload?x=1"), ("x-key", "v")], httpRoute: true)
        let result19 = receive(&machine, Array("abc".utf8))
        #expect(result19 == .none)
        let result20 = receive(&machine, Array("def".utf8))
        #expect(result20 == .none)
        guard case .runHTTPHandler(let request) = machine.endOfRequest() else {
            Issue.record("the handler should run")
            return
        }
        #expect(request.method == "PUT")
        #expect(request.path == "/upload")
        #expect(request.query == "x=1")
        #expect(request.body == Array("abcdef".utf8))
        #expect(request.header("x-key") == "v")
        #expect(machine.state == .handling(.http))
    }

    @Test func httpBodyOverTheLimitIsAnswered413() {
        var (machine, _) = routed([(":method", "POST"), (":path", "/upload")], httpRoute: true)
        let result21 = receive(&machine, [UInt8](repeating: 0, count: 65))
        #expect(result21 == .respondPlain)
        #expect(machine.state == .respondingPlain)
        #expect(machine.plainResponseHead.first == .init(name: ":status", value: "413"))
        let result22 = receive(&machine, [1])
        #expect(result22 == .none)
        guard case .none = machine.endOfRequest() else {
            Issue.record("a refused request runs nothing")
            return
        }
    }

    @Test func httpBodyOverTheLimitGetsTheRoutesOwn413() {
        var machine = machine()
        for (name, value) in [(":method", "POST"), (":path", "/v1/messages")] { _ = machine.receiveHeader(name: name, value: value) }
        let action = machine.headersComplete(httpRoute: true, rpcRouteEnforcesDeadline: nil) { message in
            HTTPFixedResponse(status: 413, headers: [("content-type", "application/json")], body: "{\"message\":\"\(message)\"}")
        }
        #expect(action == .startHTTP)
        #expect(receive(&machine, [UInt8](repeating: 0, count: 65)) == .respondPlain)
        #expect(machine.state == .respondingPlain)
        #expect(
            machine.plainResponseHead == [.init(name: ":status", value: "413"), .init(name: "content-type", value: "application/json")])
        let body = String(decoding: machine.plainBody, as: UTF8.self)
        #expect(body.hasPrefix("{\"message\":\"The request body exceeds the limit of 64 bytes (the server's --max-message-size"))
        guard case .none = machine.endOfRequest() else {
            Issue.record("a refused request runs nothing")
            return
        }
    }

    @Test func endWhileReceivingAbortsAndIgnoresTheRest() {
        var (machine, _) = routed(Self.grpcCall)
        let result23 = machine.end()
        #expect(result23)
        #expect(machine.state == .answeredEarly(.rpc(.grpc)))
        let result24 = receive(&machine, envelope("late"))
        #expect(result24 == .none)
        guard case .none = machine.endOfRequest() else {
            Issue.record("an ended call runs nothing")
            return
        }
    }

    @Test func endWhileHandlingAbortsButKeepsTheState() {
        var (machine, _) = routed(Self.grpcCall)
        _ = receive(&machine, envelope("{}"))
        _ = machine.endOfRequest()
        let result25 = machine.end()
        #expect(result25)
        #expect(machine.state == .handling(.rpc(.grpc)))
    }

    @Test func plainResponsesAndClosedStreamsHaveNothingToAbort() {
        var (plain, _) = routed([(":method", "GET"), (":path", "/x")])
        let result26 = plain.end()
        #expect(!result26)
        plain.close()
        #expect(plain.state == .closed)
        let result27 = plain.end()
        #expect(!result27)
        #expect(plain.outputReady() == .none)
    }

    // MARK: Response

    @Test func grpcHeadIsSubmittedOnceThenDataResumes() {
        var (machine, _) = routed(Self.grpcCall + [("content-type", "application/grpc+json")])
        #expect(machine.outputReady() == .submitHeadIfReady(trailersOnlyAllowed: true))
        let head = machine.responseHead(trailersOnlyStatus: nil, httpHead: nil)
        #expect(head.withBody)
        #expect(head.fields.map(\.name) == [":status", "content-type", "grpc-accept-encoding"])
        #expect(head.fields.contains(.init(name: "grpc-accept-encoding", value: "gzip,identity")))
        #expect(machine.responseSubmitted)
        #expect(machine.outputReady() == .resumeData)
    }

    @Test func responseHeadNamesGzipWhenTheClientAcceptsIt() {
        var (grpc, _) = routed(Self.grpcCall + [("grpc-accept-encoding", "identity, deflate, gzip")])
        #expect(grpc.encodings.response == .gzip)
        #expect(grpc.responseHead(trailersOnlyStatus: nil, httpHead: nil).fields.contains(.init(name: "grpc-encoding", value: "gzip")))
        var (connect, _) = routed(Self.connectCall + [("connect-accept-encoding", "gzip")])
        let connectHead = connect.responseHead(trailersOnlyStatus: nil, httpHead: nil).fields
        #expect(connectHead.contains(.init(name: "connect-content-encoding", value: "gzip")))
        #expect(connectHead.contains(.init(name: "connect-accept-encoding", value: "gzip,identity")))
        var (refused, _) = routed(Self.grpcCall + [("grpc-accept-encoding", "gzip;q=0")])
        #expect(!refused.responseHead(trailersOnlyStatus: nil, httpHead: nil).fields.contains { $0.name == "grpc-encoding" })
    }

    @Test func grpcTrailersOnlyResponseCarriesTheStatusInItsHead() {
        var (machine, _) = routed(Self.grpcCall, rpcRouteEnforcesDeadline: nil)
        let head = machine.responseHead(trailersOnlyStatus: (.unimplemented, "no such RPC"), httpHead: nil)
        #expect(!head.withBody)
        #expect(head.fields.contains(.init(name: "grpc-status", value: "12")))
        #expect(head.fields.contains(.init(name: "grpc-message", value: "no such RPC")))
    }

    @Test func connectAndHTTPHeads() {
        var (connect, _) = routed(Self.connectCall)
        #expect(connect.outputReady() == .submitHeadIfReady(trailersOnlyAllowed: false))
        let result28 = connect.responseHead(trailersOnlyStatus: nil, httpHead: nil)
        #expect(result28.fields.contains(.init(name: "content-type", value: "application/connect+json")))

        var (http, _) = routed([(":method", "GET"), (":path", "/healthz")], httpRoute: true)
        #expect(http.outputReady() == .submitHeadIfReady(trailersOnlyAllowed: false))
        let result29 = http.responseHead(trailersOnlyStatus: nil, httpHead: [(":status", "204")])
        #expect(result29.fields == [.init(name: ":status", value: "204")])
        var (headless, _) = routed([(":method", "GET"), (":path", "/healthz")], httpRoute: true)
        let result30 = headless.responseHead(trailersOnlyStatus: nil, httpHead: nil)
        #expect(result30.fields == [.init(name: ":status", value: "500")])
    }

    @Test func plainBodyIsReadInPiecesToItsEnd() {
        var (machine, _) = routed([(":method", "GET"), (":path", "/pkg.Service/Method")])
        let head = machine.responseHead(trailersOnlyStatus: nil, httpHead: nil)
        #expect(head.fields == machine.plainResponseHead)
        var received: [UInt8] = []
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 10, alignment: 1)
        defer { buffer.deallocate() }
        while true {
            let (count, end) = machine.readPlainBody(into: buffer)
            received += buffer[0..<count]
            if end { break }
            #expect(count == 10)
        }
        #expect(received == machine.plainBody)
    }

    @Test func bodyEndsByRoute() {
        let (grpc, _) = routed(Self.grpcCall)
        #expect(grpc.bodyEnd(status: (.ok, "")) == .trailers([.init(name: "grpc-status", value: "0")]))
        #expect(
            grpc.bodyEnd(status: (.internal, "boom"))
                == .trailers([.init(name: "grpc-status", value: "13"), .init(name: "grpc-message", value: "boom")]))
        let (connect, _) = routed(Self.connectCall)
        #expect(connect.bodyEnd(status: (.internal, "boom")) == .endStream)
        let (http, _) = routed([(":method", "GET"), (":path", "/healthz")], httpRoute: true)
        #expect(http.bodyEnd(status: (.ok, "")) == .endStream)
        #expect(http.bodyEnd(status: (.aborted, "reset by the handler")) == .reset)
    }

    // MARK: closed

    @Test(arguments: ["receivingHeaders", "receivingRequest", "handling", "answeredEarly", "respondingPlain"])
    func closeFromEveryStateIgnoresWhatFollows(_ from: String) {
        var machine: Machine
        switch from {
        case "receivingHeaders": machine = self.machine()
        case "receivingRequest": (machine, _) = routed(Self.grpcCall)
        case "handling":
            (machine, _) = routed(Self.grpcCall)
            _ = receive(&machine, envelope("{}"))
            _ = machine.endOfRequest()
        case "answeredEarly": (machine, _) = routed(Self.grpcCall + [("grpc-timeout", "soon")])
        default: (machine, _) = routed([(":method", "GET"), (":path", "/x")])
        }
        machine.close()
        #expect(machine.state == .closed)
        #expect(machine.route == nil)
        let data = receive(&machine, envelope("late"))
        #expect(data == .none)
        guard case .none = machine.endOfRequest() else {
            Issue.record("a closed stream runs nothing")
            return
        }
        let ended = machine.end()
        #expect(!ended)
        #expect(machine.state == .closed)
    }
}
