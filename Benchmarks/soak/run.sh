#!/usr/bin/env bash
# Soak: 100,000 short SendMessage streams through the whole path (`sluice loadtest` → `sluice serve` →
# `sluice simulate`), checking that the server's memory and descriptors do not grow with the number of
# streams served. Writes RESULTS.md and RESULTS.json here.
#
# Two runs against one server: CHECKPOINT streams (10,000), then the rest up to TOTAL (100,000). At each
# checkpoint the server's VmRSS and open descriptors (/proc/PID) are read twice: at once ("loaded": the
# finished streams are still retained for Resume) and once /metrics shows no stream running, queued or
# retained and no upstream transfer open ("settled", after --retention). The settled figures are what a
# leak would grow; the target is under 5 % RSS growth from the first checkpoint to the second. With gdb
# installed, a third reading follows `malloc_trim(0)` called in the server: RSS minus the free memory glibc's
# allocator keeps, close to what live objects use.
#
# The simulator is a separate process over TLS (ALPN h2: libcurl multiplexes every transfer over one
# connection, as with the real API), so the server's figures are its own. All three share the cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=Benchmarks/soak
OUT=$(mktemp -d /tmp/sluice-soak.XXXXXX)
TOTAL=${TOTAL:-100000}
CHECKPOINT=${CHECKPOINT:-10000}
CONCURRENCY=${CONCURRENCY:-100}
TOKENS=${TOKENS:-16}
RETENTION=${RETENTION:-5s}
# Environment for the server only, e.g. SERVER_ENV="MALLOC_ARENA_MAX=2" (recorded in RESULTS.md).
SERVER_ENV=${SERVER_ENV:-}
SIMULATION="{\"output_tokens\":$TOKENS,\"seed\":1}"

. Benchmarks/common.sh
start_simulator 1

env $SERVER_ENV "$BIN" serve --port 0 --max-active 256 --retention "$RETENTION" --log-level warning \
  --upstream-url "https://127.0.0.1:$SIMULATOR_PORT" --upstream-is-simulator --ca-bundle "$OUT/cert.pem" \
  >"$OUT/server.out" 2>"$OUT/server.err" &
SERVER_PID=$!
PORT=$(listening_port "$OUT/server.out")

gauge() {
  curl -sS --http2-prior-knowledge "http://127.0.0.1:$PORT/metrics" | awk -v name="$1" '$1 == name { print $2 + 0 }'
}

# Polls /metrics until nothing runs, waits, is retained or talks to the upstream (or fails after 5 min).
wait_settled() {
  local deadline=$((SECONDS + 300))
  until [ "$(gauge sluice_streams_active)" = 0 ] && [ "$(gauge sluice_streams_queued)" = 0 ] \
    && [ "$(gauge sluice_streams_known)" = 0 ] && [ "$(gauge sluice_upstream_open_transfers)" = 0 ]; do
    [ $SECONDS -lt $deadline ] || { echo "the server did not settle within 5 minutes" >&2; exit 1; }
    sleep 0.5
  done
}

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$SERVER_PID/status"; }

# Open descriptors once the count holds still (closing a scrape's or a client's connection is asynchronous).
fd_count() {
  local previous=-1 count
  for _ in $(seq 50); do
    count=$(find "/proc/$SERVER_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
    [ "$count" = "$previous" ] && break
    previous=$count
    sleep 0.1
  done
  echo "$count"
}

threads() { awk '/^Threads/ { print $2 }' "/proc/$SERVER_PID/status"; }

# point NAME STREAMS_SO_FAR: appends one line of figures to $OUT/points.
point() {
  echo "$1 $2 $(rss_kib) $(fd_count) $(gauge sluice_streams_known) $(threads)" >>"$OUT/points"
}

# After a settled point: the same figures once glibc has returned its free memory to the system.
trimmed_point() {
  command -v gdb >/dev/null || return 0
  gdb -p "$SERVER_PID" -batch -ex 'call (int)malloc_trim(0)' >/dev/null 2>&1 || { echo "gdb could not attach; no trimmed figures" >&2; return 0; }
  point trimmed "$1"
}

run_streams() {
  "$BIN" loadtest --target "http://127.0.0.1:$PORT" --method send-message --streams "$2" \
    --concurrency "$CONCURRENCY" --simulation "$SIMULATION" --json >"$OUT/loadtest-$1.json" 2>"$OUT/loadtest-$1.err" \
    || { echo "loadtest $1 failed: $(tail -n3 "$OUT/loadtest-$1.err")" >&2; cat "$OUT/loadtest-$1.json" >&2; exit 1; }
}

wait_settled
point start 0
run_streams first "$CHECKPOINT"
point loaded "$CHECKPOINT"
wait_settled
point settled "$CHECKPOINT"
trimmed_point "$CHECKPOINT"
run_streams rest $((TOTAL - CHECKPOINT))
point loaded "$TOTAL"
wait_settled
point settled "$TOTAL"
trimmed_point "$TOTAL"
COMPLETED=$(curl -sS --http2-prior-knowledge "http://127.0.0.1:$PORT/metrics" | awk '/^sluice_streams_completed_total/ { print }')
SIMULATOR_RSS=$(awk '/^VmRSS/ { print $2 }' "/proc/$SIMULATOR_PID/status")

python3 - "$OUT" "$HERE" "$TOTAL" "$CHECKPOINT" "$CONCURRENCY" "$TOKENS" "$RETENTION" "$SIMULATOR_RSS" "$COMPLETED" "$SERVER_ENV" <<'PY'
import datetime, json, os, platform, subprocess, sys
out, here, total, checkpoint, concurrency, tokens, retention, simulator_rss, completed, server_env = sys.argv[1:]
total, checkpoint = int(total), int(checkpoint)
points = {}
for line in open(f"{out}/points"):
    name, streams, rss, fds, known, threads = line.split()
    points[(name, int(streams))] = {"rss_kib": int(rss), "fds": int(fds), "streams_known": int(float(known)),
                                    "threads": int(threads)}
runs = {name: json.load(open(f"{out}/loadtest-{name}.json")) for name in ("first", "rest")}
ok = sum(r["streams"]["ok"] for r in runs.values())
failed = sum(r["streams"]["failed"] for r in runs.values())
a, b = points[("settled", checkpoint)], points[("settled", total)]
growth = 100.0 * (b["rss_kib"] - a["rss_kib"]) / a["rss_kib"]
la, lb = points[("loaded", checkpoint)], points[("loaded", total)]
loaded_growth = 100.0 * (lb["rss_kib"] - la["rss_kib"]) / la["rss_kib"]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))
swift = subprocess.run(["swift", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
load = os.getloadavg()
mib = lambda kib: f"{kib / 1024:.1f} MiB"
lines = [
    "# Soak: 100,000 streams through the whole path",
    "",
    f"Generated by `Benchmarks/soak/run.sh` on {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}.",
    f"Machine: {os.cpu_count()} cores ({cpu}), {int(mem) // 1024} MiB RAM, {platform.platform()}, {swift};",
    f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (the machine is shared with other builds).",
    "",
    f"`sluice loadtest` (release) → `{server_env + ' ' if server_env else ''}sluice serve --max-active 256 --retention {retention}` → `sluice simulate` (TLS),",
    f"SendMessage streams of {tokens} output tokens, unpaced, {concurrency} in flight at a time:",
    f"{checkpoint:,} streams, then {total - checkpoint:,} more against the same server process.",
    "\"loaded\" is read as soon as a run ends (finished streams still retained for Resume), \"settled\" once",
    "/metrics shows no stream running, queued or retained and no upstream transfer open.",
    "",
    "| after | streams/s | server VmRSS loaded | settled | after malloc_trim | open fds loaded | settled | threads |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|",
]
trimmed = {s: points.get(("trimmed", s)) for s in (checkpoint, total)}
for (name, streams) in (("first", checkpoint), ("rest", total)):
    run = runs[name]
    lo, se = points[("loaded", streams)], points[("settled", streams)]
    rate = (run["streams"]["ok"] + run["streams"]["failed"]) / run["wall_seconds"]
    trim = mib(trimmed[streams]["rss_kib"]) if trimmed[streams] else "n/a (no gdb)"
    lines.append(f"| {streams:,} streams | {rate:.0f} | {mib(lo['rss_kib'])} | {mib(se['rss_kib'])} | {trim} | {lo['fds']} | {se['fds']} | {se['threads']} |")
start = points[("start", 0)]
lines += [
    "",
    f"- Streams: {ok:,} OK, {failed} failed (server: `{' '.join(completed.split())}`).",
    f"- Server VmRSS at start {mib(start['rss_kib'])}, open fds {start['fds']}.",
    f"- **RSS growth from {checkpoint:,} to {total:,} streams, settled: {growth:+.2f} %** (target: under 5 %: "
    f"{'PASS' if growth < 5 else 'FAIL'}); loaded: {loaded_growth:+.2f} %.",
    f"- Open descriptors settled: {a['fds']} → {b['fds']}.",
    *([f"- RSS after malloc_trim: {mib(trimmed[checkpoint]['rss_kib'])} → {mib(trimmed[total]['rss_kib'])} "
       f"({100.0 * (trimmed[total]['rss_kib'] - trimmed[checkpoint]['rss_kib']) / trimmed[checkpoint]['rss_kib']:+.2f} %)."]
      if trimmed[checkpoint] and trimmed[total] else []),
    f"- Simulator VmRSS at the end: {mib(int(simulator_rss))}.",
]
open(f"{here}/RESULTS.md", "w").write("\n".join(lines) + "\n")
json.dump({"points": [{"point": n, "streams": s, **v} for (n, s), v in points.items()], "loadtest": runs,
           "rss_growth_settled_percent": growth, "rss_growth_loaded_percent": loaded_growth, "server_env": server_env},
          open(f"{here}/RESULTS.json", "w"), indent=2)
print("\n".join(lines))
PY
