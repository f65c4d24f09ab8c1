import SluiceIO

/// Running a plain HTTP handler, the same over HTTP/2 and HTTP/1.1.
extension StreamOutbound {
    /// Starts `handler` as a task on `loop` (its connection's), writing into this (`.raw`) queue.
    /// A handler that returns ends the response cleanly (204 if it sent no head); `HTTPStreamReset`
    /// ends it with `.aborted` (the transport cuts the response off); any other error becomes a
    /// 500 if no head went out, and ends it with `.internal`.
    func runHTTPHandler(_ handler: @escaping HTTPHandler, _ request: HTTPRequest, on loop: EventLoop) -> Task<Void, Never> {
        let writer = HTTPResponseWriter(outbound: self)
        return Task(executorPreference: loop) { [self] in
            do {
                try await handler(request, writer)
                if head == nil { try? setHead([(":status", "204")]) }
                finish(.ok, "")
            } catch is HTTPStreamReset {
                finish(.aborted, "reset by the handler")
            } catch {
                if head == nil {
                    try? setHead([(":status", "500"), ("content-type", "text/plain; charset=utf-8")])
                    try? await write(Array("internal error: \(error)\n".utf8))
                }
                finish(.internal, "\(error)")
            }
        }
    }
}
