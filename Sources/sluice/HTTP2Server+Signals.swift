import Dispatch
import Glibc
import Logging
import SluiceTransport
import SluiceWire

extension HTTP2Server {
    /// Serves until SIGTERM or SIGINT, then drains for up to `drainTimeout`; returns once stopped.
    func runUntilSignalled(drainTimeout: Duration, logger: Logger) async {
        let signals = [SIGTERM, SIGINT].map { signalNumber in
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler {
                logger.notice("received signal \(signalNumber): draining for up to \(DurationParsing.format(drainTimeout))")
                Task { await self.shutdown(drainTimeout: drainTimeout) }
            }
            source.resume()
            return source
        }
        await waitUntilStopped()
        signals.forEach { $0.cancel() }
    }
}
