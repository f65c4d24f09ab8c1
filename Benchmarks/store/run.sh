#!/usr/bin/env bash
# What the Redis store costs, and how late a remote reader is: the streaming benchmark's load
# (Benchmarks/streaming/run.sh: SendMessage streams on the simulator, stamped deltas, `sluice loadtest`)
# against one server with `--store memory` and with `--store redis://…`, in the same run, alternating
# which goes first. Writes RESULTS.md and RESULTS.json here.
#
# Per run and mode: the owner's CPU time per delivered delta (user + system, /proc/PID/stat), redis-server's
# CPU time over the same span (/proc of redis-server), Sluice's own delivery share (the owner's
# sluice_event_delivery_latency_seconds histogram: job emits → frame handed to the connection), and the
# load generator's end-to-end latency. Meanwhile probe.py starts PROBE_STREAMS more streams on the owner and
# reads each twice: on the owner (its attached client) and, with Redis, on a second replica B through
# SSE `?after_seq=0` (a remote Resume: replayed from the log, then followed live through the owner's pub/sub
# notifications). The remote lag of an event = its receipt by B's reader − its receipt by the owner's
# reader (both readers in one process, one clock), for events the owner delivered after B's reader was
# following live. The probe runs in both modes (in memory, owner readers only), so both servers do the
# same work.
#
# Knobs: LEVELS ["100:200 1000:200"] "streams:interval_ms" pairs, RUNS [3], TOKENS [40], PROBE_STREAMS [20],
# BIN [this checkout's release build], SKIP_BUILD [0], REDIS_SERVER [redis-server].
set -euo pipefail
[ -z "${BIN:-}" ] || BIN=$(realpath -s "$BIN")
cd "$(dirname "$0")/../.."
HERE=Benchmarks/store
TOKENS=${TOKENS:-40}
LEVELS=${LEVELS:-"100:200 1000:200"}
RUNS=${RUNS:-3}
PROBE_STREAMS=${PROBE_STREAMS:-20}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
OUT=$(mktemp -d /tmp/sluice-store-bench.XXXXXX)

. Benchmarks/common.sh
start_simulator 1

REDIS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$OUT" --save "" --appendonly no >"$OUT/redis.out" 2>&1 &
REDIS_PID=$!
REMOTE_PID=
PROBE_PID=
trap 'cleanup; kill $REDIS_PID $REMOTE_PID $PROBE_PID 2>/dev/null || true' EXIT
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.05; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
cpu_and_steal() { awk '/^cpu / {total = 0; for (i = 2; i <= 9; i++) total += $i; print total, $9}' /proc/stat; }
serve() { # serve NAME STORE_ARGS... : starts a server, its pid in $SERVED_PID and port in $SERVED_PORT
  local name=$1; shift
  "$BIN" serve --port 0 --max-active 2000 --max-queued 0 --max-streams-per-connection 1000 \
    --upstream-url "https://127.0.0.1:$SIMULATOR_PORT" --upstream-is-simulator --ca-bundle "$OUT/cert.pem" \
    --log-level warning "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" &
  SERVED_PID=$!
  SERVED_PORT=$(listening_port "$OUT/$name.out")
}

# run_level STREAMS INTERVAL_MS RUN MODE
run_level() {
  local streams=$1 interval=$2 mode=$4 tag="$1-$2-$3-$4"
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  local store=(--store memory)
  [ "$mode" = redis ] && store=(--store "redis://127.0.0.1:$REDIS_PORT" --replica-id a)
  serve "owner-$tag" "${store[@]}"
  SERVER_PID=$SERVED_PID; local port=$SERVED_PORT
  local remote_port=""
  if [ "$mode" = redis ]; then
    serve "remote-$tag" --store "redis://127.0.0.1:$REDIS_PORT" --replica-id b
    REMOTE_PID=$SERVED_PID; remote_port=$SERVED_PORT
    for p in "$port" "$remote_port"; do
      until curl -sf "http://127.0.0.1:$p/metrics" | grep -q '^sluice_store_up 1'; do sleep 0.05; done
    done
  fi
  local duration_ms=$(( (TOKENS * 57 / 100) * interval ))
  local rate=$(( streams * 1000 / duration_ms ))
  local cpu_before redis_before remote_before machine_before
  cpu_before=$(cpu_ticks "$SERVER_PID"); redis_before=$(cpu_ticks "$REDIS_PID")
  remote_before=$([ -n "$REMOTE_PID" ] && cpu_ticks "$REMOTE_PID" || echo 0)
  machine_before=$(cpu_and_steal)
  python3 "$HERE/probe.py" --owner "$port" ${remote_port:+--remote "$remote_port"} --streams "$PROBE_STREAMS" \
    --tokens "$TOKENS" --interval-ms "$interval" --delay 3 --out "$OUT/probe-$tag.json" 2>"$OUT/probe-$tag.err" &
  PROBE_PID=$!
  "$BIN" loadtest --target "http://127.0.0.1:$port" --method send-message --streams $((3 * streams)) --concurrency "$streams" \
    --rate "$rate" --streams-per-connection 1000 --event-loops 1 \
    --simulation "{\"output_tokens\":$TOKENS,\"token_interval_ms\":$interval,\"stamp_deltas\":true,\"seed\":1}" \
    --json >"$OUT/loadtest-$tag.json" 2>"$OUT/loadtest-$tag.err"
  wait "$PROBE_PID"; PROBE_PID=
  echo "$cpu_before $(cpu_ticks "$SERVER_PID") $redis_before $(cpu_ticks "$REDIS_PID") $remote_before $([ -n "$REMOTE_PID" ] && cpu_ticks "$REMOTE_PID" || echo 0)" \
    | awk '{print ($2 - $1) / 100, ($4 - $3) / 100, ($6 - $5) / 100}' >"$OUT/cpu-$tag"
  echo "$machine_before $(cpu_and_steal)" | awk '{print ($4 - $2) / ($3 - $1) * 100}' >"$OUT/steal-$tag"
  curl -sf "http://127.0.0.1:$port/metrics" >"$OUT/metrics-$tag"
  [ -n "$remote_port" ] && curl -sf "http://127.0.0.1:$remote_port/metrics" >"$OUT/remote-metrics-$tag"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
  if [ -n "$REMOTE_PID" ]; then kill "$REMOTE_PID"; wait "$REMOTE_PID" 2>/dev/null || true; REMOTE_PID=; fi
}

for level in $LEVELS; do
  for run in $(seq "$RUNS"); do
    if (( run % 2 )); then modes="memory redis"; else modes="redis memory"; fi
    for mode in $modes; do run_level "${level%%:*}" "${level##*:}" "$run" "$mode"; done
  done
done

COMMIT=$(git -C "$(dirname "$BIN")" rev-parse HEAD 2>/dev/null || git rev-parse HEAD)
REDIS_VERSION=$("$REDIS_SERVER" --version | head -1)
export BIN COMMIT REDIS_VERSION
python3 - "$OUT" "$HERE" "$TOKENS" "$LEVELS" "$RUNS" "$PROBE_STREAMS" <<'PY'
import datetime, json, os, platform, statistics, subprocess, sys
out, here, tokens, levels, runs, probes = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(), int(sys.argv[5]), int(sys.argv[6])

def buckets(path):
    found = []
    for line in open(path):
        if line.startswith("sluice_event_delivery_latency_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            found.append((float("inf") if bound == "+Inf" else float(bound), float(line.split()[-1])))
    return sorted(found)

def quantile_ms(found, q):
    """The q-quantile from a cumulative histogram, interpolated linearly inside its bucket."""
    total = found[-1][1]
    if not total:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in found:
        if count >= rank:
            if bound == float("inf"):
                return lower * 1000
            return (lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)) * 1000
        lower, below = bound, count
    return float("nan")

def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

def probe_lags(path):
    """(remote lag ms over live events, owner e2e ms, remote e2e ms, events counted, streams complete)."""
    lags, owner_e2e, remote_e2e, complete = [], [], [], 0
    for entry in json.load(open(path)):
        owner = {int(k): v for k, v in entry["owner"]["seqs"].items()}
        for stamp, wall in entry["owner"]["stamps"].values():
            owner_e2e.append((wall - stamp) / 1e6)
        if "remote" not in entry:
            continue
        remote = {int(k): v for k, v in entry["remote"]["seqs"].items()}
        complete += sorted(remote) == sorted(owner) and bool(owner)
        first = entry["remote"].get("first")
        for seq, received in remote.items():
            if seq in owner and first is not None and owner[seq] > first:
                lags.append((received - owner[seq]) / 1e6)
        for stamp, wall in entry["remote"]["stamps"].values():
            remote_e2e.append((wall - stamp) / 1e6)
    return lags, owner_e2e, remote_e2e, complete

raw, rows, ratios = {}, [], {}
for level in levels:
    n, interval = map(int, level.split(":"))
    per_mode = {}
    for mode in ("memory", "redis"):
        for run in range(1, runs + 1):
            tag = f"{n}-{interval}-{run}-{mode}"
            load = json.load(open(f"{out}/loadtest-{tag}.json"))
            cpu, redis_cpu, remote_cpu = map(float, open(f"{out}/cpu-{tag}").read().split())
            steal = float(open(f"{out}/steal-{tag}").read())
            found = buckets(f"{out}/metrics-{tag}")
            lags, owner_e2e, remote_e2e, complete = probe_lags(f"{out}/probe-{tag}.json")
            e2e = load["latency_ms"]["end_to_end"]
            record = {"deltas": e2e["count"], "wall": load["wall_seconds"], "ok": load["streams"]["ok"], "failed": load["streams"]["failed"],
                      "cpu_s": cpu, "redis_cpu_s": redis_cpu, "remote_cpu_s": remote_cpu, "steal_pct": steal,
                      "cpu_us_per_delta": cpu * 1e6 / e2e["count"], "redis_cpu_us_per_delta": redis_cpu * 1e6 / e2e["count"],
                      "own_p50_ms": quantile_ms(found, 0.5), "own_p99_ms": quantile_ms(found, 0.99),
                      "e2e_p50_ms": e2e.get("p50"), "e2e_p99_ms": e2e.get("p99"),
                      "remote_lag_ms": {"count": len(lags), "p50": percentile(lags, 0.5), "p99": percentile(lags, 0.99), "max": max(lags, default=float("nan"))},
                      "remote_streams_complete": complete,
                      "probe_owner_e2e_p99_ms": percentile(owner_e2e, 0.99), "probe_remote_e2e_p99_ms": percentile(remote_e2e, 0.99)}
            raw[tag] = record
            per_mode.setdefault(mode, []).append(record)
    pairs = list(zip(per_mode["memory"], per_mode["redis"]))
    ratios[level] = {"cpu_ratio_per_run": [r["cpu_us_per_delta"] / m["cpu_us_per_delta"] for m, r in pairs],
                     "own_p99_diff_ms_per_run": [r["own_p99_ms"] - m["own_p99_ms"] for m, r in pairs],
                     "remote_lag_p99_ms_per_run": [r["remote_lag_ms"]["p99"] for _, r in pairs]}
    rows.append((n, interval, per_mode))

cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))
swift = subprocess.run(["swift", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
load_avg = " ".join(open("/proc/loadavg").read().split()[:3])
lines = [
    "# The Redis store: server CPU, Redis CPU, Sluice's own delivery, remote-reader lag",
    "",
    f"Generated by `Benchmarks/store/run.sh` on {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} "
    f"(load average at the end: {load_avg}).",
    f"Machine: {os.cpu_count()} cores ({cpu_model}), {int(mem) // 1024} MiB RAM, {platform.platform()}, {swift}, {os.environ['REDIS_VERSION']}.",
    f"Server: `{os.environ['BIN']}` (built at commit `{os.environ['COMMIT']}`), default event loops (one per core).",
    "",
    f"Each stream: SendMessage on the simulator, {tokens} output tokens as about {tokens * 57 // 100} text deltas, one every `interval` ms,",
    "stamped by the simulator. Each level runs 3 × `streams` streams at the rate that keeps `streams` in flight. Simulator (TLS,",
    "1 loop), server(s), redis-server, `sluice loadtest` (1 loop) and the probe share the machine. `memory` and `redis` ran back to",
    f"back in each of {runs} runs, the order alternating. In both, probe.py adds {probes} streams read on the owner; with `redis` each",
    "is also read on replica B (`?after_seq=0`: replay from the log, then live through pub/sub notifications).",
    "",
    "- CPU µs / delta: the owner's CPU time (user + system) over the run ÷ text deltas the load generator received.",
    "- Redis µs / delta: redis-server's CPU time over the same span ÷ the same deltas (B's reads included).",
    "- Own p50 / p99: Sluice's own share of the path on the owner, from its `sluice_event_delivery_latency_seconds` histogram",
    "  (job emits → frame handed to the client's connection; interpolated inside the bucket, whose bounds are 0.1, 0.25, 0.5, 1, 2, 5 ms …).",
    "- Remote lag: per event, B's reader receipt − the owner's reader receipt (one process, one clock), for events the owner",
    "  delivered after B's reader was live. The owner's reader gets an event about when the owner appends it (served from memory",
    "  in the same loop iteration that queues its XADD), so this is append → remote receipt, less the owner's own delivery.",
    "- e2e: simulator send → load generator receipt (the load generator's streams, owner only). Steal: the hypervisor's share.",
    "",
    "| streams | interval | mode | run | ok / failed | CPU µs / delta | Redis µs / delta | B CPU s | own p50 ms | own p99 ms | e2e p50 / p99 ms | remote lag p50 / p99 / max ms (events) | remote streams whole | steal |",
    "|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---|---|---:|---:|",
]
for n, interval, per_mode in rows:
    for run in range(runs):
        for mode in ("memory", "redis"):
            r = per_mode[mode][run]
            lag = r["remote_lag_ms"]
            lag_cell = f"{lag['p50']:.2f} / {lag['p99']:.2f} / {lag['max']:.2f} ({lag['count']})" if lag["count"] else "—"
            whole = f"{r['remote_streams_complete']} / {probes}" if mode == "redis" else "—"
            lines.append(f"| {n} | {interval} ms | {mode} | {run + 1} | {r['ok']} / {r['failed']} | {r['cpu_us_per_delta']:.1f} | "
                         f"{r['redis_cpu_us_per_delta']:.1f} | {r['remote_cpu_s']:.2f} | {r['own_p50_ms']:.3f} | {r['own_p99_ms']:.3f} | "
                         f"{r['e2e_p50_ms']:.2f} / {r['e2e_p99_ms']:.2f} | {lag_cell} | {whole} | {r['steal_pct']:.1f} % |")
lines += ["", "Redis ÷ memory within each run (the two ran back to back):", "",
          "| streams | interval | CPU / delta ratio per run (median) | own p99 redis − memory, ms, per run | remote lag p99 per run, ms |",
          "|---:|---:|---|---|---|"]
for level, entry in ratios.items():
    n, interval = level.split(":")
    lines.append(f"| {n} | {interval} ms | {', '.join(f'{x:.3f}' for x in entry['cpu_ratio_per_run'])} "
                 f"({statistics.median(entry['cpu_ratio_per_run']):.3f}) | {', '.join(f'{x:+.3f}' for x in entry['own_p99_diff_ms_per_run'])} | "
                 f"{', '.join(f'{x:.2f}' for x in entry['remote_lag_p99_ms_per_run'])} |")
lines += ["", "Targets (issue 18, at 1,000 streams with a delta per 200 ms): CPU with Redis ≤ 1.3× without; own delivery p99",
          "within 0.5 ms of the in-memory run; a remote Resume reader's lag p99 ≤ 5 ms.", ""]
for level, entry in ratios.items():
    cpu = statistics.median(entry["cpu_ratio_per_run"])
    own = statistics.median(entry["own_p99_diff_ms_per_run"])
    lag = statistics.median(entry["remote_lag_p99_ms_per_run"])
    lines.append(f"- {level.replace(':', ' streams, ')} ms: CPU ratio {cpu:.3f} → {'PASS' if cpu <= 1.3 else 'FAIL'}; "
                 f"own p99 difference {own:+.3f} ms → {'PASS' if own <= 0.5 else 'FAIL'}; remote lag p99 {lag:.2f} ms → {'PASS' if lag <= 5 else 'FAIL'} "
                 "(medians over the runs)")
open(f"{here}/RESULTS.md", "w").write("\n".join(lines) + "\n")
json.dump({"binary": os.environ["BIN"], "commit": os.environ["COMMIT"], "runs": raw, "ratios": ratios}, open(f"{here}/RESULTS.json", "w"), indent=2)
print("\n".join(lines))
PY
