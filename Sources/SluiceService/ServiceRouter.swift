import Prometheus
import SluiceEngine
import SluiceTransport

/// Every route Sluice serves.
public enum ServiceRouter {
    public static func make(
        engine: StreamEngine, authentication: CallerAuthentication, registry: PrometheusCollectorRegistry,
        sampledGauges: [MetricsService.SampledGauge] = [], sseHeartbeat: Duration = .seconds(15),
        console: ConsoleService = ConsoleService(), messagesServerTools: Set<String> = [], isDraining: @escaping @Sendable () -> Bool,
        storeReady: @escaping @Sendable () -> Bool = { true }
    ) -> RPCRouter {
        var router = RPCRouter()
        SyntheticService.register(in: &router)
        StreamingService(engine: engine, authentication: authentication).register(in: &router)
        EventStreamService(engine: engine, authentication: authentication, heartbeat: sseHeartbeat, isDraining: isDraining)
            .register(in: &router)
        // The API's pings pace like the SSE routes' keep-alives (`--sse-heartbeat`).
        MessagesService(
            engine: engine, authentication: authentication, pingInterval: sseHeartbeat, serverTools: messagesServerTools,
            isDraining: isDraining
        )
        .register(in: &router)
        HealthService(isDraining: isDraining, storeReady: storeReady).register(in: &router)
        MetricsService(registry: registry, engine: engine, sampled: sampledGauges).register(in: &router)
        console.register(in: &router)
        return router
    }
}
