import SluiceWire
import Testing

@testable import SluiceTransport

@Suite struct RPCCallHeadTests {
    @Test func contentTypeNamesTheProtocol() {
        #expect(RPCCallHead.rpcProtocol(contentType: "application/grpc") == .grpc)
        #expect(RPCCallHead.rpcProtocol(contentType: "application/grpc+json") == .grpc)
        #expect(RPCCallHead.rpcProtocol(contentType: "application/connect+json; charset=utf-8") == .connect)
        #expect(RPCCallHead.rpcProtocol(contentType: "application/connect+proto") == nil)
        #expect(RPCCallHead.rpcProtocol(contentType: "application/json") == nil)
    }

    @Test func decidesEncodingsMethodAndDeadline() {
        let headers = ["connect-content-encoding": "gzip", "connect-accept-encoding": "gzip", "connect-timeout-ms": "250"]
        let started = RPCCallHead.decide(.connect, header: { headers[$0] }, path: "/a.B/C", rpcRouteEnforcesDeadline: true)
        let deadline = RPCDeadline(
            header: "connect-timeout-ms", value: "250", timeout: .milliseconds(250), backstop: RPCRouter.deadlineBackstop)
        #expect(started == .start(.connect, EncodingNegotiation(request: .gzip, response: .gzip), deadline))
        #expect(
            RPCCallHead.decide(.grpc, header: { _ in nil }, path: "/a.B/C", rpcRouteEnforcesDeadline: nil)
                == .fail(.grpc, .unimplemented, "unknown method /a.B/C: this server has no such RPC"))
        guard
            case .fail(.connect, .unimplemented, let message) = RPCCallHead.decide(
                .connect, header: { $0 == "connect-content-encoding" ? "zstd" : nil }, path: "/a.B/C", rpcRouteEnforcesDeadline: false)
        else {
            Issue.record("an unknown encoding is UNIMPLEMENTED")
            return
        }
        #expect(message.contains("'zstd'"))
    }

    @Test func responseHeadsNameTheEncodings() {
        let gzip = EncodingNegotiation(request: .identity, response: .gzip)
        let connect = RPCCallHead.responseHead(.connect, contentType: nil, encodings: gzip)
        #expect(connect.map(\.0) == [":status", "content-type", "connect-accept-encoding", "connect-content-encoding"])
        let grpc = RPCCallHead.responseHead(.grpc, contentType: "application/grpc+json", encodings: EncodingNegotiation())
        #expect(grpc.map(\.1) == ["200", "application/grpc+json", "gzip,identity"])
    }

    @Test func aWholeBodyHoldsExactlyOneMessage() throws {
        let decoder = EnvelopeDecoder(maxMessageSize: 64)
        let one = EnvelopeEncoder.encode(Array("{}".utf8))
        #expect(try RPCCallHead.singleMessage(of: one, decoder: decoder).get() == Array("{}".utf8))
        let failures: [([UInt8], String)] = [
            ([], "this method takes exactly one request message, but the client sent none"),
            (one + one, "this method takes exactly one request message, but the client sent more"),
            (Array(one.dropLast()), "the request ended inside a message: the length prefix announced 2 bytes but only 1 arrived"),
        ]
        for (body, message) in failures {
            #expect(throws: RPCError(.invalidArgument, message)) { try RPCCallHead.singleMessage(of: body, decoder: decoder).get() }
        }
    }
}
