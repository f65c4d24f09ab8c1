import SluiceIO
import SluiceWire

/// Running an RPC handler, the same over HTTP/2 and HTTP/1.1.
extension StreamOutbound {
    /// Starts `handler` as a task on `loop` (its connection's), writing into this (`.envelope`) queue. Returning
    /// ends the call with OK; an `RPCError` with its status; cancellation with CANCELLED; anything else INTERNAL.
    func runRPCHandler(_ handler: @escaping RPCHandler, _ request: RPCRequest, on loop: EventLoop, server: HTTP2Server)
        -> Task<Void, Never>
    {
        let writer = RPCResponseWriter(outbound: self)
        let workLoop = request.executor ?? loop
        return Task(executorPreference: loop) { [self] in
            defer { server.callEnded(on: workLoop) }
            do {
                try await handler(request, writer)
                finish(.ok, "")
            } catch let error as RPCError {
                finish(error.code, error.message)
            } catch is CancellationError {
                finish(.cancelled, "the call was cancelled")
            } catch {
                finish(.internal, "internal error: \(error)")
            }
        }
    }
}
