import Dispatch
import Glibc
import Logging
import SluiceTransport
import SluiceWire

extension HTTP2Server {
    /// Serves until SIGTERM or SIGINT, then drains for up to `drainTimeout` while `whileDraining` runs (the
    /// engine's hand-off, which needs the loops until it is done); returns once stopped.
    func runUntilSignalled(
        drainTimeout: Duration, logger: Logger, whileDraining: @escaping @Sendable () async -> Void = {}
    ) async {
        let signals = [SIGTERM, SIGINT].map { signalNumber in
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler {
                logger.notice("received signal \(signalNumber): draining for up to \(DurationParsing.format(drainTimeout))")
                self.holdLoops()
                Task { await self.shutdown(drainTimeout: drainTimeout) }
                Task {
                    await whileDraining()
                    self.releaseLoops()
                }
            }
            source.resume()
            return source
        }
        await waitUntilStopped()
        signals.forEach { $0.cancel() }
    }
}
