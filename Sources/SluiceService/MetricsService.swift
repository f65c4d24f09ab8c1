import Glibc
import Prometheus
import SluiceEngine
import SluiceTransport
import SluiceWire

import class CoreMetrics.Timer

/// `GET /metrics` in Prometheus text format: the engine's counters and histograms (recorded
/// through swift-metrics into `registry`), plus gauges and process metrics read at scrape time.
public struct MetricsService: Sendable {
    /// A gauge whose value is read at each scrape.
    public struct SampledGauge: Sendable {
        public var name: String
        public var help: String
        public var read: @Sendable () -> Double

        public init(name: String, help: String, read: @escaping @Sendable () -> Double) {
            self.name = name
            self.help = help
            self.read = read
        }
    }

    let registry: PrometheusCollectorRegistry
    let engine: StreamEngine
    let sampled: [SampledGauge]

    public init(registry: PrometheusCollectorRegistry, engine: StreamEngine, sampled: [SampledGauge] = []) {
        self.registry = registry
        self.engine = engine
        self.sampled = sampled
    }

    /// A gauge under `name` exactly (Prometheus adds no namespace or unit to it).
    private func gauge(_ name: String, help: String) -> Gauge {
        registry.makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help))
    }

    public func register(in router: inout RPCRouter) {
        let active = gauge("sluice_streams_active", help: "Streams talking to the upstream now")
        let queued = gauge("sluice_streams_queued", help: "Streams waiting for a slot")
        let known = gauge("sluice_streams_known", help: "Streams running or retained for Resume")
        let resident = gauge("process_resident_memory_bytes", help: "Resident memory")
        let openFDs = gauge("process_open_fds", help: "Open file descriptors")
        let sampledGauges = sampled.map { (gauge($0.name, help: $0.help), $0.read) }
        router.registerHTTP("/metrics") { _, writer in
            for (gauge, read) in sampledGauges { gauge.set(read()) }
            active.set(Double(engine.scheduler.active))
            queued.set(Double(engine.scheduler.queued))
            known.set(Double(engine.streamCount))
            resident.set(Double(Self.residentBytes()))
            openFDs.set(Double(Self.openFileDescriptors()))
            try writer.head(status: 200, headers: [("content-type", "text/plain; version=0.0.4; charset=utf-8")])
            try await writer.write(registry.emitToBuffer())
        }
    }

    static let deliveryLatencyLabel = "sluice_event_delivery_latency_seconds"

    /// The factory to bootstrap swift-metrics with: Prometheus, with buckets for event delivery latency that
    /// resolve the sub-millisecond range (the default buckets start at 5 ms).
    public static func makeFactory(registry: PrometheusCollectorRegistry) -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets[deliveryLatencyLabel] = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .seconds(1), .seconds(5),
        ]
        // The Redis store: a command's round trip from queueing to reply, and commands per pipeline.
        factory.durationHistogramBuckets["sluice_store_latency_seconds"] = factory.durationHistogramBuckets[deliveryLatencyLabel]
        factory.valueHistogramBuckets["sluice_store_pipeline_commands"] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024]
        return factory
    }

    /// Records each event's delivery latency: from the job emitting it to its frame being handed to the
    /// client's connection (`HTTP2ServerConfiguration.messageDelivered`). Create it after bootstrapping.
    public static func deliveryLatencyRecorder() -> @Sendable (Duration) -> Void {
        let timer = Timer(label: deliveryLatencyLabel)
        return { timer.recordNanoseconds($0.nanoseconds) }
    }

    /// Resident set size, from the second field of /proc/self/statm (in pages).
    static func residentBytes() -> Int {
        guard let file = fopen("/proc/self/statm", "r") else { return 0 }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 128)
        guard fgets(&buffer, Int32(buffer.count), file) != nil else { return 0 }
        let fields = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: " ")
        guard fields.count >= 2, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    static func openFileDescriptors() -> Int {
        guard let directory = opendir("/proc/self/fd") else { return 0 }
        defer { closedir(directory) }
        var count = 0
        while readdir(directory) != nil { count += 1 }
        return max(0, count - 3)  // ".", ".." and the directory's own descriptor
    }
}
