import SluiceTransport

/// Every RPC method Sluice serves.
public enum ServiceRouter {
    public static func make() -> RPCRouter {
        var router = RPCRouter()
        SyntheticService.register(in: &router)
        return router
    }
}
