import Metrics
import SluiceWire

/// The engine's metrics, through swift-metrics (the service exports them as Prometheus text).
struct EngineMetrics: Sendable {
    func finished(_ code: StatusCode) {
        Counter(label: "sluice_streams_completed_total", dimensions: [("status", code.name)]).increment()
    }

    func retried(reason: String) {
        Counter(label: "sluice_upstream_retries_total", dimensions: [("reason", reason)]).increment()
    }

    func abandoned() {
        Counter(label: "sluice_streams_abandoned_cleaned_total").increment()
    }

    func tookOver() {
        Counter(label: "sluice_streams_taken_over_total").increment()
    }

    /// A stream this replica handed off while shutting down; `acknowledged`: the store released it (else it is
    /// claimed once its lease lapses).
    func handedOff(acknowledged: Bool) {
        Counter(label: "sluice_streams_handed_off_total", dimensions: [("acknowledged", acknowledged ? "true" : "false")]).increment()
    }

    func rejected() {
        Counter(label: "sluice_streams_rejected_total").increment()
    }

    func timeToFirstToken(_ duration: Duration) {
        Timer(label: "sluice_time_to_first_token_seconds").recordNanoseconds(duration.nanoseconds)
    }
}
