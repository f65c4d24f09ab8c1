#!/usr/bin/env bash
# Upstream benchmark: simulated tokens per second that Sluice's libcurl client (UpstreamClient) sustains
# against the Anthropic simulator across 1,000 concurrent streams, and the client's CPU cost per event.
# Writes RESULTS.md and RESULTS.json next to this script.
#
#   Benchmarks/upstream/run.sh
#
# Two transports, each with an unpaced (token_interval_ms 0: as fast as both sides go) and a paced run:
#   h2c  `sluice simulate` (cleartext HTTP/2). libcurl 7.88 can't reuse h2c connections (curl issue
#        10634, see CurlMulti.swift), so the client opens one connection per transfer.
#   TLS  `sluice simulate` has no TLS flags, so the same simulator (AnthropicSimulator on HTTP2Server)
#        runs as `UpstreamBench serve` with a self-signed certificate made here with openssl; over
#        https libcurl multiplexes every transfer on one connection.
# The client (`UpstreamBench run`) is always a separate process from the simulator, so its rusage is
# the client's whole cost and the simulator's CPU comes from /proc/PID/stat.
#
# Environment knobs (defaults in brackets):
#   STREAMS [1000]           concurrent streams per measured run
#   TOKENS [200]             output_tokens per stream
#   PACED_INTERVAL_MS [20]   token_interval_ms of the paced runs
#   WARMUP_STREAMS [100]     unmeasured streams before each run (also opens the TLS connection)
#   ROUNDS [3]               measured rounds; tables show the median of each column
#   EVENT_LOOPS [2]          simulator event-loop threads
#   SKIP_BUILD [0]           1 = reuse existing release binaries
#   KEEP_LOGS [0]            1 = keep the work directory (path printed at the end)
#   SETTLE_SECONDS [40]      after a run, how long to wait for libcurl to retire every transfer (more
#                            than the client's 30 s idle timeout, which retires any that linger)
#   RUN_TIMEOUT [300]        hard limit (s) for one client run
#
# Requires: swift, openssl, python3, timeout (coreutils).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STREAMS=${STREAMS:-1000}
TOKENS=${TOKENS:-200}
PACED_INTERVAL_MS=${PACED_INTERVAL_MS:-20}
WARMUP_STREAMS=${WARMUP_STREAMS:-100}
ROUNDS=${ROUNDS:-3}
EVENT_LOOPS=${EVENT_LOOPS:-2}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_LOGS=${KEEP_LOGS:-0}
SETTLE_SECONDS=${SETTLE_SECONDS:-40}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
READY_TIMEOUT=60

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in swift openssl python3 timeout; do
    command -v "$tool" >/dev/null || die "'$tool' not found in PATH"
done

# h2c needs a descriptor per transfer on both sides (plus the simulator's per-loop listeners).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-upstream-bench.XXXXXX")
declare -A SIM_PID=() SIM_PORT=() SIM_CMD=() SIM_READY=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${SIM_PID[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $KEEP_LOGS == 1 || $status != 0 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------------------------------------
# Build

if [[ $SKIP_BUILD != 1 ]]; then
    log "building sluice (release) at $ROOT"
    (cd "$ROOT" && swift build -c release --product sluice) >&2
    log "building UpstreamBench (release) in $HERE"
    (cd "$HERE" && swift build -c release --product UpstreamBench) >&2
fi
SLUICE_BIN="$(cd "$ROOT" && swift build -c release --show-bin-path)/sluice"
BENCH_BIN="$(cd "$HERE" && swift build -c release --show-bin-path)/UpstreamBench"
[[ -x $SLUICE_BIN ]] || die "sluice binary missing: $SLUICE_BIN"
[[ -x $BENCH_BIN ]] || die "UpstreamBench binary missing: $BENCH_BIN"
# The source state the binaries were built from: recorded now, not at the end, since the tree may change
# while the runs go on. Unknown when the build was skipped.
if [[ $SKIP_BUILD != 1 ]]; then
    GIT_COMMIT="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
    GIT_DIRTY="$(git -C "$ROOT" status --porcelain -- Sources Package.swift 2>/dev/null | awk '{ print $2 }' | tr '\n' ' ')"
else
    GIT_COMMIT="unknown (SKIP_BUILD=1; binaries from $(date -u -r "$SLUICE_BIN" +%Y-%m-%dT%H:%M:%SZ))"
    GIT_DIRTY=""
fi

# ----------------------------------------------------------------------------------------------
# Simulators

# A throwaway P-256 certificate for localhost; the client trusts exactly it (caBundlePath).
CERT="$WORK/cert.pem" KEY="$WORK/key.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$KEY" -out "$CERT" \
    -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 >"$WORK/openssl.log" 2>&1 \
    || { cat "$WORK/openssl.log" >&2; die "openssl req failed"; }

# start_simulator NAME CMD...: starts it, waits for its "listening on HOST:PORT" line, records the port.
start_simulator() {
    local name=$1
    shift
    log "starting $name simulator: $*"
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    SIM_PID[$name]=$!
    SIM_CMD[$name]="$*"
    local deadline=$((SECONDS + READY_TIMEOUT)) line=""
    until line=$(grep -m1 'listening on' "$WORK/$name.out" 2>/dev/null); do
        kill -0 "${SIM_PID[$name]}" 2>/dev/null || { cat "$WORK/$name.err" >&2; die "$name simulator exited"; }
        ((SECONDS < deadline)) || die "$name simulator not ready within ${READY_TIMEOUT}s"
        sleep 0.05
    done
    SIM_READY[$name]=$line
    SIM_PORT[$name]=$(sed -E 's/.*listening on [^ ]*:([0-9]+).*/\1/' <<<"$line")
    log "$name ready (pid ${SIM_PID[$name]}): $line"
}

start_simulator h2c "$SLUICE_BIN" simulate --port 0 --event-loops "$EVENT_LOOPS" --log-level warning
start_simulator tls "$BENCH_BIN" serve --port 0 --event-loops "$EVENT_LOOPS" --tls-cert "$CERT" --tls-key "$KEY"

url_for() {
    case $1 in
        h2c) echo "http://127.0.0.1:${SIM_PORT[h2c]}" ;;
        tls) echo "https://localhost:${SIM_PORT[tls]}" ;;  # the certificate's name
    esac
}

# ----------------------------------------------------------------------------------------------
# Runs

LOADAVG_BEFORE=$(cat /proc/loadavg)
# Second `top` sample = CPU share over the last second (the first is since process start).
OTHER_PROCS=$(COLUMNS=200 top -b -w 200 -n 2 -d 1 -o %CPU 2>/dev/null | awk '/^top -/ { block++ } block == 2 && $1 ~ /^[0-9]+$/ && n < 8 { printf "%s%% %s; ", $9, $12; n++ }' || true)
log "load average before measuring: $LOADAVG_BEFORE"

: >"$WORK/runs.jsonl"
for round in $(seq 1 "$ROUNDS"); do
    transports=(h2c tls)
    ((round % 2 == 0)) && transports=(tls h2c)  # alternate, so drift in machine load hits both alike
    for transport in "${transports[@]}"; do
        for interval in 0 "$PACED_INTERVAL_MS"; do
            kill -0 "${SIM_PID[$transport]}" 2>/dev/null || die "$transport simulator died"
            cmd=("$BENCH_BIN" run --url "$(url_for "$transport")" --streams "$STREAMS" --tokens "$TOKENS"
                --interval-ms "$interval" --warmup-streams "$WARMUP_STREAMS" --server-pid "${SIM_PID[$transport]}"
                --settle-seconds "$SETTLE_SECONDS"
                --label "$transport-$interval-r$round")
            [[ $transport == tls ]] && cmd+=(--ca-bundle "$CERT")
            id="$transport-$interval-r$round"
            printf '%q ' "${cmd[@]}" >"$WORK/$id.cmd"
            timeout "$RUN_TIMEOUT" "${cmd[@]}" >"$WORK/$id.json" 2>"$WORK/$id.err" \
                || { cat "$WORK/$id.err" >&2; die "client run $id failed"; }
            python3 - "$WORK/$id.json" "$transport" "$round" "$WORK/$id.cmd" >>"$WORK/runs.jsonl" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
run.update(transport=sys.argv[2], round=int(sys.argv[3]), command=open(sys.argv[4]).read().strip())
print(json.dumps(run))
PY
            log "$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%-12s %6d/%d ok  %9.0f tokens/s  %9.0f events/s  client %.2f µs/event  simulator %.2f µs/event  failures %s  transfers open 1 s later %d" % (r["label"], r["completed"], r["streams"], r["tokens_per_second"], r["events_per_second"], r["client_cpu_us_per_event"], r["simulator_cpu_us_per_event"] or 0, r["failures"], r["transfers_open_1s_after"]))' "$WORK/$id.json")"
        done
    done
done
LOADAVG_AFTER=$(cat /proc/loadavg)

# ----------------------------------------------------------------------------------------------
# Describe the run and summarise

export WORK ROOT HERE STREAMS TOKENS PACED_INTERVAL_MS WARMUP_STREAMS ROUNDS EVENT_LOOPS SETTLE_SECONDS LOADAVG_BEFORE LOADAVG_AFTER OTHER_PROCS
export SIM_H2C_CMD="${SIM_CMD[h2c]}" SIM_TLS_CMD="${SIM_CMD[tls]}" SIM_H2C_READY="${SIM_READY[h2c]}" SIM_TLS_READY="${SIM_READY[tls]}"
export SWIFT_VERSION="$(swift --version 2>&1 | head -n1)"
export CURL_CONFIG_VERSION="$(curl-config --version 2>/dev/null || echo unknown)"
export LIBCURL_PACKAGE="$(dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\n' 'libcurl4*' 2>/dev/null | awk '$1 == "ii" { printf "%s%s %s", n++ ? ", " : "", $2, $3 }' || true)"
export OPENSSL_VERSION="$(openssl version)"
export GIT_COMMIT GIT_DIRTY
export MEASURED_AT="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

rc=0
python3 - <<'PY' || rc=$?
import json, os, platform, statistics
env = os.environ
work, root, here = env["WORK"], env["ROOT"], env["HERE"]
runs = [json.loads(line) for line in open(os.path.join(work, "runs.jsonl"))]

def first(path, prefix):
    for line in open(path):
        if line.startswith(prefix):
            return line.split(":", 1)[1].strip()
    return "?"

def sym(text):
    return text.replace(work + "/", "$WORK/").replace(root, "$REPO")

os_name = "?"
try:
    os_name = dict(l.rstrip().split("=", 1) for l in open("/etc/os-release") if "=" in l).get("PRETTY_NAME", "?").strip('"')
except OSError:
    pass
mem_kb = int(first("/proc/meminfo", "MemTotal").split()[0])
machine = {
    "measured_at_utc": env["MEASURED_AT"],
    "nproc": os.cpu_count(),
    "cpu": first("/proc/cpuinfo", "model name"),
    "memory_kib": mem_kb,
    "kernel": platform.release(),
    "os": os_name,
    "swift": env["SWIFT_VERSION"],
    "libcurl": env["CURL_CONFIG_VERSION"] + " (" + env["LIBCURL_PACKAGE"] + ")",
    "openssl": env["OPENSSL_VERSION"],
    "loadavg_before": env["LOADAVG_BEFORE"],
    "loadavg_after": env["LOADAVG_AFTER"],
    "busiest_processes_before": env["OTHER_PROCS"],
    "git_commit": env["GIT_COMMIT"],
    "git_dirty_files": env["GIT_DIRTY"].split(),
}
paced = int(env["PACED_INTERVAL_MS"])
SCENARIOS = [("h2c", 0), ("h2c", paced), ("tls", 0), ("tls", paced)]
TRANSPORT = {"h2c": "h2c, one connection per transfer", "tls": "TLS, multiplexed"}

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

rows, summary = [], []
for transport, interval in SCENARIOS:
    group = [r for r in runs if r["transport"] == transport and r["token_interval_ms"] == interval]
    if not group:
        continue
    failures = {}
    for r in group:
        for kind, count in r["failures"].items():
            failures[kind] = failures.get(kind, 0) + count
    keys = ["tokens_per_second", "events_per_second", "client_cpu_us_per_event", "curl_thread_cpu_us_per_event",
            "client_cores_busy", "simulator_cpu_us_per_event", "simulator_cores_busy", "wall_seconds",
            "peak_connections", "peak_concurrent_streams", "stream_seconds_p50", "stream_seconds_p99",
            "client_max_rss_kib", "events", "output_tokens"]
    row = {k: median([r[k] for r in group]) for k in keys}
    row.update(
        scenario="unpaced (0 ms)" if interval == 0 else f"paced ({interval} ms/token)",
        transport=TRANSPORT[transport], token_interval_ms=interval, rounds=len(group),
        streams=group[0]["streams"], completed=sum(r["completed"] for r in group),
        attempted=sum(r["streams"] for r in group), failures=failures,
        lingering_transfers=max(r["transfers_open_1s_after"] for r in group),
        retired_after_seconds=max((r["seconds_until_all_transfers_retired"] or 0) for r in group),
        leaked_transfers=max(r["transfers_open_at_end"] for r in group),
    )
    summary.append(row)

def f(value, digits=0):
    return "–" if value is None else f"{value:,.{digits}f}"

lines = [
    "# Upstream benchmark: libcurl client × Anthropic simulator",
    "",
    "Generated by `Benchmarks/upstream/run.sh` (numbers below are from one run of that script).",
    "",
    "## Machine",
    "",
    "| | |",
    "|---|---|",
    f"| Date (UTC) | {machine['measured_at_utc']} (end of measurements) |",
    f"| nproc | {machine['nproc']} |",
    f"| CPU | {machine['cpu']} |",
    f"| Memory | {mem_kb / 1048576:.1f} GiB ({mem_kb} kB) |",
    f"| Kernel | {machine['kernel']} |",
    f"| OS | {machine['os']} |",
    f"| Swift | {machine['swift']} |",
    f"| libcurl | {machine['libcurl']} |",
    f"| OpenSSL | {machine['openssl']} |",
    f"| Load average before / after measuring | {machine['loadavg_before']} / {machine['loadavg_after']} |",
    f"| Busiest processes before measuring | {machine['busiest_processes_before']} |",
    f"| Sluice commit (at build time) | `{machine['git_commit']}`" + (" + uncommitted changes in " + ", ".join(f"`{p}`" for p in machine["git_dirty_files"]) if machine["git_dirty_files"] else "") + " |",
    "",
    "## Method",
    "",
    f"- Each measured run starts {env['STREAMS']} streams at once (`POST /v1/messages`, `\"stream\": true`) on one `UpstreamClient`,",
    f"  each with `sluice-simulation: {{\"seed\": i, \"output_tokens\": {env['TOKENS']}, \"token_interval_ms\": I}}`, and consumes every",
    "  event as an `AnthropicEvent` in its own task. Wall time is from submitting the first stream to the last stream's end.",
    f"- Before each measured run, {env['WARMUP_STREAMS']} unmeasured warm-up streams run on the same client (first-use costs; over TLS",
    "  this also opens the connection the measured streams then multiplex on).",
    "- Verified per stream: it ended normally after `message_stop` and its `message_delta` reported output tokens; anything",
    "  else is a failure, counted by `UpstreamFailure.Kind` (or `no_message_stop` / `no_output_tokens`). After each run,",
    f"  `UpstreamClient.openTransfers` is read 1 s after the last stream ended (\"lingering\": libcurl has not yet retired the",
    f"  transfer although its stream is complete) and polled for up to {env['SETTLE_SECONDS']} s more (still open then = leaked).",
    "  Neither affects the measured numbers: they are taken when the last stream ends.",
    "- tokens/s = output tokens (sum of each stream's final `message_delta` usage; the simulator's text is *about* `output_tokens`",
    "  long) ÷ wall time. events/s counts every event the client delivered (message_start, ping, content blocks, text deltas",
    "  of 1–3 tokens each, message_delta, message_stop).",
    "- **Client CPU** = getrusage(RUSAGE_SELF) of the client process over the measured run (libcurl multi thread + the",
    "  Swift tasks consuming the streams + runtime), minus the socket sampler's own thread CPU time; ÷ events. The libcurl",
    "  multi thread (unnamed; found as the thread `UpstreamClient.init` creates) is also shown alone, from its",
    "  /proc/self/task/TID/schedstat. **Simulator CPU** = utime+stime of the simulator process (/proc/PID/stat, 10 ms ticks)",
    "  over the same interval. \"cores busy\" = CPU time ÷ wall time.",
    "- Peak connections = the client's open sockets (sampled every 20 ms) minus libcurl's wake-up socket pair (over h2c it",
    "  can exceed the stream count by warm-up transfers libcurl has not retired yet; see lingering transfers below).",
    "  Peak concurrent streams = most streams between their first event and their end at once: in the unpaced runs the",
    "  simulator writes a whole stream in one burst, so streams mostly queue for the CPU rather than overlap.",
    f"- Client and simulator share the machine's {machine['nproc']} cores. {env['ROUNDS']} rounds, alternating transport order;",
    "  tables show the median of each column over rounds (failures and completions are summed).",
    "- Transports: **h2c** = `sluice simulate` (cleartext HTTP/2 with prior knowledge); libcurl 7.88 cannot reuse h2c",
    "  connections (curl issue 10634, see `CurlMulti.swift`), so every transfer gets its own connection. **TLS** = the",
    "  same simulator (`AnthropicSimulator` on `HTTP2Server`) served by `UpstreamBench serve` with a throwaway self-signed",
    "  P-256 certificate, because `sluice simulate` has no TLS flags; the client trusts exactly that certificate",
    "  (`caBundlePath`) and multiplexes every transfer on one connection (ALPN h2).",
    "",
    "Exact commands (ports are chosen per run):",
    "",
    "```sh",
    "# build",
    "(cd $REPO && swift build -c release --product sluice)",
    "(cd $REPO/Benchmarks/upstream && swift build -c release --product UpstreamBench)",
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $WORK/key.pem -out $WORK/cert.pem \\",
    "    -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1",
    "# simulators",
    sym(env["SIM_H2C_CMD"]) + "   # " + env["SIM_H2C_READY"],
    sym(env["SIM_TLS_CMD"]) + "   # " + env["SIM_TLS_READY"],
    "# measured runs (round 1; later rounds identical)",
] + [sym(r["command"]) for r in runs if r["round"] == 1] + [
    "```",
    "",
]
load1 = float(machine["loadavg_before"].split()[0])
if load1 > 0.5 * (machine["nproc"] or 1):
    lines += [f"> **Caveat:** the 1-minute load average was {load1} on {machine['nproc']} cores when measuring started: other",
              "> processes competed for the CPU, so rates are pessimistic; CPU per event is the least affected number.", ""]
lines += [
    "## Results",
    "",
    f"{env['STREAMS']} concurrent streams × {env['TOKENS']} output tokens per run.",
    "",
    "| scenario | transport | streams ok | tokens/s | events/s | client CPU / event | of which libcurl thread | client cores busy | simulator CPU / event | simulator cores busy | wall | stream p50 / p99 | peak conns | peak concurrent streams | failures | transfers lingering 1 s after (max) |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
]
for row in summary:
    failures = ", ".join(f"{k}: {v}" for k, v in sorted(row["failures"].items())) or "0"
    lingering = str(row["lingering_transfers"])
    if row["leaked_transfers"]:
        lingering += f", {row['leaked_transfers']} never retired (leaked)"
    elif row["lingering_transfers"]:
        lingering += f", all retired {row['retired_after_seconds']:.1f} s after"
    lines.append(
        f"| {row['scenario']} | {row['transport']} | {row['completed']:,} / {row['attempted']:,} ({row['rounds']} rounds) "
        f"| {f(row['tokens_per_second'])} | {f(row['events_per_second'])} | {f(row['client_cpu_us_per_event'], 2)} µs "
        f"| {f(row['curl_thread_cpu_us_per_event'], 2)} µs | {f(row['client_cores_busy'], 2)} "
        f"| {f(row['simulator_cpu_us_per_event'], 2)} µs | {f(row['simulator_cores_busy'], 2)} | {f(row['wall_seconds'], 2)} s "
        f"| {f(row['stream_seconds_p50'], 2)} / {f(row['stream_seconds_p99'], 2)} s | {f(row['peak_connections'])} "
        f"| {f(row['peak_concurrent_streams'])} | {failures} | {lingering} |")
lines += ["", "Per-round values, the client's peak RSS and event/token totals are in RESULTS.json.", ""]
lingering = [r for r in summary if r["lingering_transfers"]]
if lingering:
    lines += [
        "**Lingering transfers:** some libcurl transfers stayed open after their stream had delivered `message_stop` and"
        + " ended (" + "; ".join(f"{r['scenario']} over {r['transport']}: up to {r['lingering_transfers']} per run, the last"
                                 f" retired {r['retired_after_seconds']:.1f} s after the run" for r in lingering)
        + "). `UpstreamClient`'s idle timeout is 30 s from a transfer's last event and its poll wakes at least once a"
        + " second. The streams themselves completed; the transfers (and, over h2c, their connections) were held meanwhile.",
        "",
    ]
open(os.path.join(here, "RESULTS.md"), "w").write("\n".join(lines))
json.dump({"machine": machine, "settings": {k.lower(): int(env[k]) for k in
           ("STREAMS", "TOKENS", "PACED_INTERVAL_MS", "WARMUP_STREAMS", "ROUNDS", "EVENT_LOOPS")},
           "simulators": {"h2c": {"command": sym(env["SIM_H2C_CMD"]), "ready_line": env["SIM_H2C_READY"]},
                          "tls": {"command": sym(env["SIM_TLS_CMD"]), "ready_line": env["SIM_TLS_READY"]}},
           "summary": summary, "runs": [dict(r, command=sym(r["command"])) for r in runs]},
          open(os.path.join(here, "RESULTS.json"), "w"), indent=2)
print("\n".join(lines[lines.index("## Results"):]))
bad = [r for r in summary if r["failures"] or r["leaked_transfers"] or r["completed"] != r["attempted"]]
if bad:
    print("FAILED: streams failed or transfers leaked (see the table)")
raise SystemExit(1 if bad else 0)
PY
log "wrote $HERE/RESULTS.md and $HERE/RESULTS.json"
exit "$rc"
