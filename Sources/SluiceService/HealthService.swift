import SluiceTransport
import SluiceWire

/// Liveness, readiness and the gRPC health protocol (JSON for our clients, protobuf for
/// Kubernetes' gRPC probes and grpc_health_probe).
public struct HealthService: Sendable {
    public static let checkPath = "/grpc.health.v1.Health/Check"
    static let knownServices: Set = ["", "sluice.v1.StreamingService", "sluice.v1.Synthetic"]

    let isDraining: @Sendable () -> Bool
    /// False while a configured store has not been reachable since start-up (a store that goes down later does not
    /// make the replica unready: its own streams go on).
    let storeReady: @Sendable () -> Bool

    public init(isDraining: @escaping @Sendable () -> Bool, storeReady: @escaping @Sendable () -> Bool = { true }) {
        self.isDraining = isDraining
        self.storeReady = storeReady
    }

    public func register(in router: inout RPCRouter) {
        router.registerHTTP("/healthz") { _, writer in
            try writer.head(status: 200, headers: [("content-type", "text/plain; charset=utf-8")])
            try await writer.write(Array("ok\n".utf8))
        }
        router.registerHTTP("/readyz") { _, writer in
            let draining = isDraining()
            let storeReady = storeReady()
            try writer.head(status: draining || !storeReady ? 503 : 200, headers: [("content-type", "text/plain; charset=utf-8")])
            try await writer.write(Array((draining ? "draining\n" : storeReady ? "ready\n" : "store unreachable\n").utf8))
        }
        router.register(Self.checkPath) { request, writer in
            let isJSON =
                request.rpcProtocol == .connect || request.header("content-type")?.hasSuffix("+json") == true
                || request.message.first == UInt8(ascii: "{")
            let service = isJSON ? try Self.jsonService(request.message) : try Self.protobufService(request.message)
            guard Self.knownServices.contains(service) else {
                throw RPCError(.notFound, "unknown service '\(service)'")
            }
            let serving = !isDraining() && storeReady()
            if isJSON {
                try await writer.write(JSONValue.object(["status": .string(serving ? "SERVING" : "NOT_SERVING")]).serialized())
            } else {
                // HealthCheckResponse { ServingStatus status = 1; }: SERVING = 1, NOT_SERVING = 2.
                try await writer.write([0x08, serving ? 0x01 : 0x02])
            }
        }
    }

    private static func jsonService(_ message: [UInt8]) throws(RPCError) -> String {
        let body = try JSONValue.requestObject(message)
        return body["service"]?.stringValue ?? ""
    }

    /// HealthCheckRequest { string service = 1; }: empty, or field 1 with a short length.
    private static func protobufService(_ message: [UInt8]) throws(RPCError) -> String {
        if message.isEmpty { return "" }
        guard message.count >= 2, message[0] == 0x0A, message[1] < 0x80, Int(message[1]) == message.count - 2 else {
            throw RPCError(.invalidArgument, "the Health/Check request is neither JSON nor a protobuf HealthCheckRequest")
        }
        return String(decoding: message[2...], as: UTF8.self)
    }
}
