import ArgumentParser
import Glibc
import Histogram
import SluiceClient
import SluiceIO
import SluiceWire

struct LoadTest: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loadtest",
        abstract: "Run many concurrent streams against a Sluice server and report latency percentiles.",
        discussion: """
            --method synthetic calls /sluice.v1.Synthetic/Stream (--frames, --size, --interval-ms); send-message \
            calls SendMessage with a --simulation scenario (on a server whose upstream is the simulator). Streams \
            start while fewer than --concurrency are in flight, at most --rate per second, until --streams have \
            started or --duration has passed; the streams in flight then run to their end.

            Reported (HdrHistogram, ms): time to first event (from starting the call, so it includes connecting and \
            waiting for a pooled connection slot), the gap between consecutive events of a stream, and stream \
            duration (start to final status). End-to-end event latency (simulator emits → client receives) is \
            measured for send-message when the scenario sets "stamp_deltas": true and the simulator runs on this \
            machine (its text deltas then carry their send time); otherwise it is n/a.

            Exit status: 0 when every stream ended OK, 1 otherwise.
            """
    )

    enum Method: String, ExpressibleByArgument, CaseIterable {
        case sendMessage = "send-message"
        case synthetic
    }

    @OptionGroup var server: ServerOptions
    @Option(help: "send-message or synthetic.")
    var method = Method.synthetic
    @Option(help: "Streams to run in total (default 1000, or unlimited with --duration).")
    var streams: Int?
    @Option(help: "Streams in flight at once.")
    var concurrency = 100
    @Option(help: "Stop starting streams after this long (e.g. 30s).")
    var duration: CLIDuration?
    @Option(help: "Stream starts per second (default: as fast as --concurrency allows).")
    var rate: Double?
    @Option(help: "Per-stream deadline, sent as grpc-timeout.")
    var timeout: CLIDuration?

    // Synthetic
    @Option(help: "synthetic: frames per stream.")
    var frames = 10
    @Option(help: "synthetic: bytes of text per frame.")
    var size = 64
    @Option(help: "synthetic: pause between frames, in ms.")
    var intervalMs = 100

    // SendMessage
    @Option(help: "send-message: simulator scenario as JSON, e.g. '{\"output_tokens\":50,\"token_interval_ms\":10}'.")
    var simulation: String?
    @Option(help: "send-message: model name.")
    var model = "claude-sonnet-4-5"
    @Option(help: "send-message: max_tokens.")
    var maxTokens = 256
    @Option(help: "send-message: the user message.")
    var prompt = "Tell me about rivers."

    // Client
    @Option(help: "Most connections to open (default: as many as the streams need).")
    var connections: Int?
    @Option(help: "Most streams per connection (the server's SETTINGS_MAX_CONCURRENT_STREAMS may lower it).")
    var streamsPerConnection = 100
    @Option(help: "Client event-loop threads (default: one per core).")
    var eventLoops = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    @Flag(help: "Print the result as one JSON object on stdout.")
    var json = false

    func validate() throws {
        if let streams, streams < 1 { throw ValidationError("--streams must be at least 1") }
        if concurrency < 1 { throw ValidationError("--concurrency must be at least 1") }
        if let rate, !(rate > 0) { throw ValidationError("--rate must be above 0") }
        if let connections, connections < 1 { throw ValidationError("--connections must be at least 1") }
        if streamsPerConnection < 1 { throw ValidationError("--streams-per-connection must be at least 1") }
        if eventLoops < 1 { throw ValidationError("--event-loops must be at least 1") }
        if frames < 0 || size < 0 || intervalMs < 0 { throw ValidationError("--frames, --size and --interval-ms must be 0 or more") }
        if simulation != nil && method != .sendMessage { throw ValidationError("--simulation applies to --method send-message") }
        if let simulation, case .object? = try? JSONValue(parsing: simulation) {
        } else if simulation != nil {
            throw ValidationError("--simulation must be a JSON object")
        }
    }

    private func request() throws -> (path: String, message: [UInt8]) {
        switch method {
        case .synthetic:
            let body: JSONValue = ["frames": .integer(frames), "size": .integer(size), "interval_ms": .integer(intervalMs)]
            return ("/sluice.v1.Synthetic/Stream", body.serialized())
        case .sendMessage:
            var request = SluiceMessageRequest(model: model, maxTokens: maxTokens, prompt: prompt)
            if let simulation { request.simulation = try JSONValue(parsing: simulation) }
            return (SluiceClient.sendMessagePath, request.json.serialized())
        }
    }

    func run() async throws {
        // Ten thousand streams need a few hundred sockets at most, but --streams-per-connection 1 needs many.
        raiseDescriptorLimit()
        var configuration = server.clientConfiguration()
        configuration.http2.streamsPerConnection = streamsPerConnection
        configuration.http2.maxConnectionsPerTarget = connections
        configuration.eventLoops = eventLoops
        let client = try server.makeClient(configuration)
        let (path, message) = try request()
        let plan = LoadDriver.Plan(
            total: streams ?? (duration == nil ? 1000 : nil), concurrency: concurrency, rate: rate, path: path, message: message,
            timeout: timeout?.duration
        )
        let driver = LoadDriver(client: client, plan: plan)
        // On the client's first loop, its 5 ms clock is a loop timer and starting calls needs no thread hop.
        let progress = Task(executorPreference: client.eventLoops[0]) { await driver.reportProgress(json: json) }
        await driver.run(stopAfter: duration?.duration)
        progress.cancel()
        _ = await progress.value
        let report = driver.report(client: client)
        await client.shutdown()
        if json {
            print(report.json(method: method.rawValue, target: server.target).serializedString)
        } else {
            print(report.table(method: method.rawValue, target: server.target, eventLoops: eventLoops))
        }
        if report.failed > 0 { throw ExitCode(1) }
    }
}

/// Starts streams as the plan allows and records what they see. Stream callbacks run on the
/// client's loop threads, so each stream costs one small observer object and no task.
final class LoadDriver: Sendable {
    struct Plan: Sendable {
        var total: Int?
        var concurrency: Int
        var rate: Double?
        var path: String
        var message: [UInt8]
        var timeout: Duration?
    }

    struct State {
        var started = 0
        var inFlight = 0
        var ok = 0
        var failed = 0
        var events = 0
        var stopStarting = false
        var statuses: [StatusCode: Int] = [:]
        /// A sample message per failing status, to say why.
        var failureMessages: [StatusCode: String] = [:]
        var firstEvent = LoadDriver.histogram()
        var gap = LoadDriver.histogram()
        var endToEnd = LoadDriver.histogram()
        var streamDuration = LoadDriver.histogram()
        var finishedWaiter: CheckedContinuation<Void, Never>?
        var finishedAt: ContinuousClock.Instant?
    }

    let client: SluiceClient
    let plan: Plan
    let startedAt = ContinuousClock.now
    let state = LockedValue(State())

    init(client: SluiceClient, plan: Plan) {
        self.client = client
        self.plan = plan
    }

    /// Microseconds, up to an hour, 3 significant digits.
    static func histogram() -> Histogram<UInt64> {
        Histogram(lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
    }

    static func microseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return UInt64(max(0, seconds * 1_000_000 + attoseconds / 1_000_000_000_000))
    }

    /// Returns once no more streams will start and none is in flight.
    func run(stopAfter duration: Duration?) async {
        let stopper = duration.map { duration in
            Task {
                try? await Task.sleep(for: duration)
                stopStarting()
            }
        }
        await withCheckedContinuation { continuation in
            state.withLock { $0.finishedWaiter = continuation }
            pump()
        }
        stopper?.cancel()
    }

    /// Starts as many streams as the plan allows now.
    func pump() {
        let count = state.withLock { state -> Int in
            guard !state.stopStarting else { return 0 }
            var allowed = plan.concurrency - state.inFlight
            if let total = plan.total { allowed = min(allowed, total - state.started) }
            if let rate = plan.rate {
                let elapsed = ContinuousClock.now - startedAt
                let due = Int(Double(elapsed.components.seconds) * rate + Double(elapsed.components.attoseconds) * 1e-18 * rate) + 1
                allowed = min(allowed, due - state.started)
            }
            allowed = max(0, allowed)
            state.started += allowed
            state.inFlight += allowed
            if let total = plan.total, state.started >= total { state.stopStarting = true }
            return allowed
        }
        for _ in 0..<count {
            let observer = LoadStream(driver: self, started: .now)
            client.startCall(path: plan.path, message: plan.message, timeout: plan.timeout, observer: observer)
        }
        resumeIfDone()
    }

    func stopStarting() {
        state.withLock { $0.stopStarting = true }
        resumeIfDone()
    }

    private func resumeIfDone() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard state.stopStarting, state.inFlight == 0, let waiter = state.finishedWaiter else { return nil }
            state.finishedWaiter = nil
            state.finishedAt = .now
            return waiter
        }
        waiter?.resume()
    }

    fileprivate func recordEvent(firstAfter: Duration?, gap: Duration?, endToEndNanoseconds: Int64?) {
        state.withLock { state in
            state.events += 1
            if let firstAfter { _ = state.firstEvent.record(Self.microseconds(firstAfter)) }
            if let gap { _ = state.gap.record(Self.microseconds(gap)) }
            if let endToEndNanoseconds { _ = state.endToEnd.record(UInt64(max(endToEndNanoseconds, 0) / 1000)) }
        }
    }

    /// The send time a stamped text delta carries (`"delta":"@T<unix-ns>;`), if any.
    static func stampNanoseconds(_ message: [UInt8]) -> Int64? {
        let marker = Array(#""delta":"@T"#.utf8)
        guard let start = message.firstRange(of: marker)?.upperBound else { return nil }
        var value: Int64 = 0
        var index = start
        while index < message.count, message[index] >= UInt8(ascii: "0"), message[index] <= UInt8(ascii: "9") {
            value = value &* 10 &+ Int64(message[index] - UInt8(ascii: "0"))
            index += 1
        }
        return index < message.count && message[index] == UInt8(ascii: ";") ? value : nil
    }

    static func realtimeNanoseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }

    fileprivate func recordEnd(_ status: RPCClientStatus, duration: Duration) {
        state.withLock { state in
            state.inFlight -= 1
            state.statuses[status.code, default: 0] += 1
            if status.isOK {
                state.ok += 1
            } else {
                state.failed += 1
                if state.failureMessages[status.code] == nil { state.failureMessages[status.code] = status.message }
            }
            _ = state.streamDuration.record(Self.microseconds(duration))
        }
        pump()
    }

    /// Once a second on stderr: started, in flight, done, failed, events/s. Also the clock that
    /// starts streams at `--rate`.
    func reportProgress(json: Bool) async {
        let terminal = isatty(STDERR_FILENO) == 1
        var lastEvents = 0
        var lastReport = ContinuousClock.now
        while !Task.isCancelled {
            try? await EventLoop.sleep(for: .milliseconds(plan.rate == nil ? 100 : 5))
            if plan.rate != nil { pump() }
            guard ContinuousClock.now - lastReport >= .seconds(1) else { continue }
            lastReport = .now
            let snapshot = state.withLock { ($0.started, $0.inFlight, $0.ok + $0.failed, $0.failed, $0.events) }
            let line =
                "started \(snapshot.0)  in flight \(snapshot.1)  done \(snapshot.2)  failed \(snapshot.3)  events/s \(snapshot.4 - lastEvents)  connections \(client.openConnections)"
            lastEvents = snapshot.4
            writeAll(terminal ? "\r\u{1B}[K" + line : line + "\n", to: STDERR_FILENO)
        }
        if terminal { writeAll("\n", to: STDERR_FILENO) }
    }

    func report(client: SluiceClient) -> LoadReport {
        let connections = client.openConnections
        return state.withLock { state in
            LoadReport(
                started: state.started, ok: state.ok, failed: state.failed, events: state.events,
                wall: (state.finishedAt ?? .now) - startedAt, statuses: state.statuses, failureMessages: state.failureMessages,
                firstEvent: state.firstEvent, gap: state.gap, endToEnd: state.endToEnd, streamDuration: state.streamDuration,
                concurrency: plan.concurrency,
                connections: connections
            )
        }
    }
}

/// One stream's observer: touched only on its loop thread.
private final class LoadStream: RPCClientCallObserver, @unchecked Sendable {
    let driver: LoadDriver
    let started: ContinuousClock.Instant
    var lastEvent: ContinuousClock.Instant?

    init(driver: LoadDriver, started: ContinuousClock.Instant) {
        self.driver = driver
        self.started = started
    }

    func callReceived(_ message: [UInt8]) {
        let now = ContinuousClock.now
        let endToEnd = LoadDriver.stampNanoseconds(message).map { LoadDriver.realtimeNanoseconds() - $0 }
        if let lastEvent {
            driver.recordEvent(firstAfter: nil, gap: now - lastEvent, endToEndNanoseconds: endToEnd)
        } else {
            driver.recordEvent(firstAfter: now - started, gap: nil, endToEndNanoseconds: endToEnd)
        }
        lastEvent = now
    }

    func callFinished(_ status: RPCClientStatus) {
        driver.recordEnd(status, duration: .now - started)
    }
}

struct LoadReport {
    let started: Int
    let ok: Int
    let failed: Int
    let events: Int
    let wall: Duration
    let statuses: [StatusCode: Int]
    let failureMessages: [StatusCode: String]
    let firstEvent: Histogram<UInt64>
    let gap: Histogram<UInt64>
    let endToEnd: Histogram<UInt64>
    let streamDuration: Histogram<UInt64>
    let concurrency: Int
    let connections: Int

    static let percentiles: [(label: String, key: String, value: Double)] = [
        ("p50", "p50", 50), ("p90", "p90", 90), ("p99", "p99", 99), ("p99.9", "p99_9", 99.9),
    ]

    private var wallSeconds: Double { Double(wall.components.seconds) + Double(wall.components.attoseconds) * 1e-18 }

    private static func milliseconds(_ microseconds: UInt64) -> Double { Double(microseconds) / 1000 }

    private static func format(_ value: Double) -> String {
        let hundredths = Int((value * 100).rounded())
        let fraction = String(hundredths % 100)
        return "\(hundredths / 100).\(fraction.count == 1 ? "0" + fraction : fraction)"
    }

    private func rows() -> [(String, String, Histogram<UInt64>)] {
        [
            ("time to first event", "time_to_first_event", firstEvent), ("inter-event gap", "inter_event_gap", gap),
            ("end-to-end latency", "end_to_end", endToEnd), ("stream duration", "stream_duration", streamDuration),
        ]
    }

    func table(method: String, target: String, eventLoops: Int) -> String {
        var lines: [String] = []
        lines.append(
            "\(method) against \(target): \(started) streams, concurrency \(concurrency), \(eventLoops) client loops, \(connections) connections open at the end"
        )
        lines.append(
            "wall \(Self.format(wallSeconds)) s · \(events) events (\(Int(Double(events) / max(wallSeconds, 1e-9))) events/s) · \(Int(Double(ok + failed) / max(wallSeconds, 1e-9))) streams/s"
        )
        let statusText = statuses.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.name) \($0.value)" }.joined(separator: ", ")
        lines.append("status: \(statusText.isEmpty ? "none" : statusText)")
        for (code, message) in failureMessages.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            lines.append("  e.g. \(code.name): \(message)")
        }
        let header = ["ms", "p50", "p90", "p99", "p99.9", "max", "count"]
        var table = [header]
        for (label, _, histogram) in rows() {
            guard histogram.totalCount > 0 else {
                table.append([label, "-", "-", "-", "-", "-", "0"])
                continue
            }
            table.append(
                [label] + Self.percentiles.map { Self.format(Self.milliseconds(histogram.valueAtPercentile($0.value))) }
                    + [Self.format(Self.milliseconds(histogram.max)), String(histogram.totalCount)]
            )
        }
        let widths = (0..<header.count).map { column in table.map { $0[column].count }.max() ?? 0 }
        for row in table {
            lines.append(
                row.enumerated().map { column, cell in
                    column == 0 ? cell.padding(toLength: widths[0]) : String(repeating: " ", count: widths[column] - cell.count) + cell
                }.joined(separator: "  "))
        }
        if endToEnd.totalCount == 0 {
            lines.append("(end-to-end latency needs send-message with a scenario that sets \"stamp_deltas\": true)")
        }
        return lines.joined(separator: "\n")
    }

    func json(method: String, target: String) -> JSONValue {
        var latency: [String: JSONValue] = [:]
        for (_, key, histogram) in rows() {
            var fields: [String: JSONValue] = ["count": .integer(histogram.totalCount)]
            if histogram.totalCount > 0 {
                for percentile in Self.percentiles {
                    fields[percentile.key] = .double(Self.milliseconds(histogram.valueAtPercentile(percentile.value)))
                }
                fields["max"] = .double(Self.milliseconds(histogram.max))
            }
            latency[key] = .object(fields)
        }
        return [
            "method": .string(method), "target": .string(target),
            "streams": ["started": .integer(started), "ok": .integer(ok), "failed": .integer(failed)],
            "statuses": .object(Dictionary(uniqueKeysWithValues: statuses.map { ($0.key.name, JSONValue.integer($0.value)) })),
            "events": .integer(events),
            "wall_seconds": .double(wallSeconds),
            "events_per_second": .double(Double(events) / max(wallSeconds, 1e-9)),
            "latency_ms": .object(latency),
        ]
    }
}

extension String {
    fileprivate func padding(toLength length: Int) -> String {
        count >= length ? self : self + String(repeating: " ", count: length - count)
    }
}
