// Upstream benchmark: how many simulated tokens per second Sluice's libcurl client (UpstreamClient)
// sustains against the Anthropic simulator across many concurrent streams, and its CPU cost per event.
//
//   UpstreamBench serve [--port 0] [--event-loops 2] [--tls-cert PEM --tls-key PEM]
//       The simulator, for the TLS variant: `sluice simulate` only speaks h2c. Prints one ready line.
//   UpstreamBench run --url URL [--ca-bundle PEM] [--streams 1000] [--tokens 200] [--interval-ms 0]
//       [--warmup-streams 100] [--server-pid PID] [--settle-seconds 5] [--label NAME]
//       Runs the streams against a simulator in another process and prints one JSON object.
//
// The client and the simulator run in separate processes so that getrusage(RUSAGE_SELF) here is the
// client's whole cost (libcurl multi thread + the Swift tasks consuming the streams) and the
// simulator's CPU can be read from /proc/PID/stat without untangling threads.
import Glibc
import Logging
import SluiceIO
import SluiceSimulator
import SluiceTransport
import SluiceUpstream
import Synchronization

// MARK: Command line

struct Options {
    private var values: [String: String] = [:]

    init(_ arguments: ArraySlice<String>) {
        var iterator = arguments.makeIterator()
        while let flag = iterator.next() {
            guard flag.hasPrefix("--"), let value = iterator.next() else { fail("expected --flag value, got \(flag)") }
            values[String(flag.dropFirst(2))] = value
        }
    }

    func string(_ name: String) -> String? { values[name] }

    func int(_ name: String, _ fallback: Int) -> Int {
        guard let text = values[name] else { return fallback }
        guard let value = Int(text) else { fail("--\(name) must be an integer") }
        return value
    }
}

func fail(_ message: String) -> Never {
    // To stderr (stdout carries the JSON result); `stderr` itself is a global var Swift 6 won't touch.
    let line = Array("UpstreamBench: \(message)\n".utf8)
    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(2)
}

// MARK: /proc and rusage

func readFile(_ path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = fread(&chunk, 1, chunk.count, file)
        if count <= 0 { break }
        bytes += chunk[..<count]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Entries of a /proc directory (task ids, descriptor numbers).
func listDirectory(_ path: String) -> [String] {
    guard let directory = opendir(path) else { return [] }
    defer { closedir(directory) }
    var names: [String] = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

/// utime+stime of a process in seconds, from /proc/PID/stat (counts threads that have already exited).
func processCPUSeconds(pid: Int) -> Double? {
    guard let stat = readFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
    // Fields after "(comm)": state is field 3, utime and stime are fields 14 and 15.
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// A thread's on-CPU time in seconds from /proc/self/task/TID/schedstat (nanoseconds, unlike stat's ticks).
func threadCPUSeconds(tid: String) -> Double? {
    guard let text = readFile("/proc/self/task/\(tid)/schedstat"),
        let first = text.split(separator: " ").first, let nanoseconds = Double(first)
    else { return nil }
    return nanoseconds / 1e9
}

func selfUsage() -> (cpuSeconds: Double, maxRSSKiB: Int) {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
    return (seconds(usage.ru_utime) + seconds(usage.ru_stime), usage.ru_maxrss)
}

func threadCPUNow() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
}

/// The client's open sockets: shows how many connections libcurl used (one per h2c transfer with
/// libcurl 7.88, one for all TLS-multiplexed transfers).
func openSockets() -> Int {
    var buffer = [CChar](repeating: 0, count: 64)
    return listDirectory("/proc/self/fd").reduce(0) { count, fd in
        let length = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count - 1)
        guard length > 0 else { return count }
        return buffer.prefix(7).elementsEqual("socket:".utf8CString.prefix(7)) ? count + 1 : count
    }
}

func raiseDescriptorLimit() {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

// MARK: serve

func serve(_ options: Options) async throws {
    raiseDescriptorLimit()
    var logger = Logger(label: "upstream-bench.simulator")
    logger.logLevel = .warning
    var configuration = HTTP2ServerConfiguration()
    configuration.host = "127.0.0.1"
    configuration.port = options.int("port", 0)
    configuration.eventLoops = options.int("event-loops", 2)
    configuration.tlsCertificatePath = options.string("tls-cert")
    configuration.tlsPrivateKeyPath = options.string("tls-key")
    var router = RPCRouter()
    AnthropicSimulator().register(in: &router)
    let server = try HTTP2Server(configuration: configuration, router: router, logger: logger)
    try server.start()
    print("UpstreamBench simulator listening on 127.0.0.1:\(server.port) \(server.isTLS ? "TLS" : "h2c")")
    fflush(nil)  // run.sh waits for this line
    await server.waitUntilStopped()  // until SIGTERM ends the process
}

// MARK: run

struct StreamResult: Sendable {
    var events = 0
    var textDeltas = 0
    var textBytes = 0
    var outputTokens = 0
    var failure: String?
    var seconds = 0.0
}

/// Peak streams between their first event and their end, tracked with two atomics so it costs nothing
/// measurable.
final class Concurrency: Sendable {
    private let current = Atomic<Int>(0)
    private let peakValue = Atomic<Int>(0)
    var peak: Int { peakValue.load(ordering: .relaxed) }

    func enter() {
        let now = current.add(1, ordering: .relaxed).newValue
        var seen = peakValue.load(ordering: .relaxed)
        while now > seen {
            let (exchanged, original) = peakValue.compareExchange(expected: seen, desired: now, ordering: .relaxed)
            if exchanged { break }
            seen = original
        }
    }

    func leave() { current.subtract(1, ordering: .relaxed) }
}

func consume(
    _ client: UpstreamClient, index: Int, tokens: Int, intervalMS: Int, concurrency: Concurrency
) async -> StreamResult {
    // Each stream its own seed, so the texts differ like real ones; max_tokens well above `tokens`.
    let body = Array(
        #"{"model":"claude-sim-1","max_tokens":\#(tokens + 1000),"stream":true,"messages":[{"role":"user","content":"Tell me about rivers."}]}"#
            .utf8)
    let scenario = #"{"seed":\#(index),"output_tokens":\#(tokens),"token_interval_ms":\#(intervalMS)}"#
    var result = StreamResult()
    var sawStop = false
    let start = ContinuousClock.now
    do throws(UpstreamFailure) {
        for try await event in client.streamMessage(body: body, headers: [("sluice-simulation", scenario)]) {
            if result.events == 0 { concurrency.enter() }
            result.events += 1
            switch event {
            case .contentBlockDelta(_, .text(let text)):
                result.textDeltas += 1
                result.textBytes += text.utf8.count
            case .messageDelta(_, _, let usage):
                result.outputTokens = usage.outputTokens ?? result.outputTokens  // cumulative
            case .messageStop:
                sawStop = true
            default:
                break
            }
        }
        if !sawStop {
            result.failure = "no_message_stop"
        } else if result.outputTokens == 0 {
            // Not `!= tokens`: the simulator's text is *about* output_tokens long (a cut inside a code block
            // closes the fence, trailing whitespace is trimmed), and it reports the exact count in usage.
            result.failure = "no_output_tokens"
        }
    } catch {
        result.failure = error.kind.rawValue
    }
    if result.events > 0 { concurrency.leave() }
    result.seconds = (ContinuousClock.now - start) / .seconds(1)
    return result
}

func runStreams(_ client: UpstreamClient, count: Int, tokens: Int, intervalMS: Int, concurrency: Concurrency) async
    -> [StreamResult]
{
    await withTaskGroup(of: StreamResult.self) { group in
        for index in 0..<count {
            group.addTask { await consume(client, index: index, tokens: tokens, intervalMS: intervalMS, concurrency: concurrency) }
        }
        var results: [StreamResult] = []
        results.reserveCapacity(count)
        for await result in group { results.append(result) }
        return results
    }
}

func percentile(_ sorted: [Double], _ fraction: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    return sorted[min(sorted.count - 1, max(0, Int((fraction * Double(sorted.count)).rounded(.up)) - 1))]
}

func json(_ value: Double?) -> String {
    guard let value, value.isFinite else { return "null" }
    return value.description
}

/// `after - before` when both readings exist.
func difference(_ before: Double?, _ after: Double?) -> Double? {
    guard let before, let after else { return nil }
    return after - before
}

func run(_ options: Options) async throws {
    raiseDescriptorLimit()
    guard let url = options.string("url") else { fail("run needs --url") }
    let streams = options.int("streams", 1000)
    let tokens = options.int("tokens", 200)
    let intervalMS = options.int("interval-ms", 0)
    let warmupStreams = options.int("warmup-streams", min(100, streams))
    let serverPID = options.int("server-pid", 0)

    var configuration = UpstreamConfiguration(baseURL: url, apiKey: "sk-ant-benchmark", caBundlePath: options.string("ca-bundle"))
    configuration.maxConcurrentStreams = max(1000, streams)
    // The libcurl multi thread is the only thread UpstreamClient creates, and it is unnamed: find it as
    // the task that appears across the initializer (nothing else runs yet, so no other thread can start).
    let tasksBefore = Set(listDirectory("/proc/self/task"))
    let client = try UpstreamClient(configuration: configuration)
    let newTasks = Set(listDirectory("/proc/self/task")).subtracting(tasksBefore)
    let curlTID = newTasks.count == 1 ? newTasks.first : nil
    // Sockets that aren't connections (libcurl's wake-up socket pair).
    let idleSockets = openSockets()

    // Warm-up: first-use costs (code paths, allocator growth) and, over TLS, the one connection that the
    // measured streams then multiplex on (it stays in libcurl's connection cache).
    if warmupStreams > 0 {
        let warm = await runStreams(client, count: warmupStreams, tokens: tokens, intervalMS: 0, concurrency: Concurrency())
        if let failed = warm.first(where: { $0.failure != nil }) { fail("warm-up stream failed: \(failed.failure!)") }
    }

    // Samples the client's open sockets every 20 ms (the unpaced runs last about a second); its own CPU
    // time is measured and subtracted from the client's.
    let sampler = Task.detached { () -> (peak: Int, cpuSeconds: Double) in
        var peak = 0
        var cpu = 0.0
        while !Task.isCancelled {
            let before = threadCPUNow()
            peak = max(peak, openSockets())
            cpu += threadCPUNow() - before
            try? await Task.sleep(for: .milliseconds(20))
        }
        return (peak, cpu)
    }

    let concurrency = Concurrency()
    let usageBefore = selfUsage()
    let curlBefore = curlTID.flatMap(threadCPUSeconds)
    let serverBefore = serverPID > 0 ? processCPUSeconds(pid: serverPID) : nil
    let start = ContinuousClock.now
    let results = await runStreams(client, count: streams, tokens: tokens, intervalMS: intervalMS, concurrency: concurrency)
    let wall = (ContinuousClock.now - start) / .seconds(1)
    let usageAfter = selfUsage()
    let curlAfter = curlTID.flatMap(threadCPUSeconds)
    let serverAfter = serverPID > 0 ? processCPUSeconds(pid: serverPID) : nil
    sampler.cancel()
    let sockets = await sampler.value

    // A stream ends at message_stop; libcurl retires the transfer a moment later, on END_STREAM. Transfers
    // still open a second later are lingering; wait (up to --settle-seconds) to see when they go, and any
    // still open then are leaked.
    func openTransfers(after seconds: Int) async throws -> (open: Int, seconds: Double) {
        let deadline = start + .seconds(wall) + .seconds(seconds)
        while client.openTransfers > 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        return (client.openTransfers, (ContinuousClock.now - start) / .seconds(1) - wall)
    }
    let lingering = try await openTransfers(after: 1)
    let leaked = try await openTransfers(after: options.int("settle-seconds", 5))
    await client.shutdown()

    let events = results.reduce(0) { $0 + $1.events }
    let outputTokens = results.reduce(0) { $0 + $1.outputTokens }
    let textDeltas = results.reduce(0) { $0 + $1.textDeltas }
    let textBytes = results.reduce(0) { $0 + $1.textBytes }
    var failures: [String: Int] = [:]
    for case let failure? in results.map(\.failure) { failures[failure, default: 0] += 1 }
    let durations = results.map(\.seconds).sorted()
    let clientCPU = usageAfter.cpuSeconds - usageBefore.cpuSeconds - sockets.cpuSeconds
    let curlCPU = difference(curlBefore, curlAfter)
    let serverCPU = difference(serverBefore, serverAfter)
    let perEvent = { (seconds: Double?) -> String in json(seconds.map { $0 * 1e6 / Double(max(events, 1)) }) }

    let fields: [(String, String)] = [
        ("label", "\"\(options.string("label") ?? "")\""),
        ("url", "\"\(url)\""),
        ("streams", "\(streams)"),
        ("tokens_per_stream", "\(tokens)"),
        ("token_interval_ms", "\(intervalMS)"),
        ("warmup_streams", "\(warmupStreams)"),
        ("wall_seconds", json(wall)),
        ("completed", "\(results.filter { $0.failure == nil }.count)"),
        ("failures", "{" + failures.sorted { $0.key < $1.key }.map { "\"\($0.key)\": \($0.value)" }.joined(separator: ", ") + "}"),
        ("events", "\(events)"),
        ("text_deltas", "\(textDeltas)"),
        ("text_bytes", "\(textBytes)"),
        ("output_tokens", "\(outputTokens)"),
        ("tokens_per_second", json(Double(outputTokens) / wall)),
        ("events_per_second", json(Double(events) / wall)),
        ("client_cpu_seconds", json(clientCPU)),
        ("client_cpu_us_per_event", perEvent(clientCPU)),
        ("client_cores_busy", json(clientCPU / wall)),
        ("curl_thread_cpu_seconds", json(curlCPU)),
        ("curl_thread_cpu_us_per_event", perEvent(curlCPU)),
        ("sampler_cpu_seconds", json(sockets.cpuSeconds)),
        ("client_max_rss_kib", "\(usageAfter.maxRSSKiB)"),
        ("simulator_cpu_seconds", json(serverCPU)),
        ("simulator_cpu_us_per_event", perEvent(serverCPU)),
        ("simulator_cores_busy", json(serverCPU.map { $0 / wall })),
        ("peak_connections", "\(sockets.peak - idleSockets)"),
        ("peak_concurrent_streams", "\(concurrency.peak)"),
        ("stream_seconds_p50", json(percentile(durations, 0.5))),
        ("stream_seconds_p99", json(percentile(durations, 0.99))),
        ("stream_seconds_max", json(durations.last ?? 0)),
        ("transfers_open_1s_after", "\(lingering.open)"),
        ("transfers_open_at_end", "\(leaked.open)"),
        ("seconds_until_all_transfers_retired", leaked.open == 0 ? json(leaked.seconds) : "null"),
        ("client_threads", "\(listDirectory("/proc/self/task").count)"),
    ]
    print("{" + fields.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}")
}

// MARK: main

let arguments = CommandLine.arguments
switch arguments.dropFirst().first {
case "serve": try await serve(Options(arguments.dropFirst(2)))
case "run": try await run(Options(arguments.dropFirst(2)))
default: fail("usage: UpstreamBench serve|run [--flag value]…")
}
