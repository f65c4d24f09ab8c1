#!/usr/bin/env bash
# Transport benchmark: Sluice vs grpc-swift-2 on `/sluice.v1.Synthetic/Stream`, measured with
# h2load in the same run, alternating servers. Writes RESULTS.md and RESULTS.json next to this
# script.
#
#   Benchmarks/transport/run.sh
#   BASELINE_BIN=/path/to/older/sluice BASELINE_LABEL=before Benchmarks/transport/run.sh
#
# With BASELINE_BIN, an older Sluice build is a third server in the same run (same scenarios,
# alternating with the others), and the results add the ratio current / baseline per scenario:
# on a shared machine, only a same-run comparison separates a regression from noise.
#
# Environment knobs (defaults in brackets):
#   ROUNDS [3]            measured rounds; each round runs every scenario on both servers
#   MEASURE_SECONDS [5]   target duration of each measured h2load run (sizes -n from the warm-up)
#   WARMUP_SECONDS [3]    duration of the warm-up h2load pass per scenario per server
#   SKIP_BUILD [0]        1 = reuse existing release binaries
#   BIN [this checkout's release build]  the current Sluice binary to measure (not built if set)
#   PEER_BIN [GRPCSwiftPeer's release build]  a prebuilt grpc-swift-2 peer (not built if set)
#   BASELINE_BIN []       an older Sluice binary to measure alongside (e.g. a pre-refactor build)
#   BASELINE_LABEL [baseline]  its server name in the results (letters, digits, . _ -)
#   KEEP_LOGS [0]         1 = keep the raw h2load outputs/logs (path printed at the end)
#   H2LOAD_TIMEOUT [300]  hard limit (s) for any single h2load run
#   IDLE_WAIT_MAX [0]     wait up to this many seconds for the 1-min load average to fall to
#   IDLE_LOAD_MAX [1.0]   this value before measuring (load is recorded in the results either way)
#
# Requires: swift, h2load and nghttp (nghttp2-client), python3, timeout (coreutils).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEER_DIR="$HERE/GRPCSwiftPeer"
SUMMARIZE="$HERE/summarize.py"

ROUNDS=${ROUNDS:-3}
MEASURE_SECONDS=${MEASURE_SECONDS:-5}
WARMUP_SECONDS=${WARMUP_SECONDS:-3}
SKIP_BUILD=${SKIP_BUILD:-0}
BIN=${BIN:-}
PEER_BIN=${PEER_BIN:-}
BASELINE_BIN=${BASELINE_BIN:-}
BASELINE_LABEL=${BASELINE_LABEL:-baseline}
KEEP_LOGS=${KEEP_LOGS:-0}
H2LOAD_TIMEOUT=${H2LOAD_TIMEOUT:-300}
HOST=127.0.0.1
METHOD_PATH=/sluice.v1.Synthetic/Stream
READY_TIMEOUT=60

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in swift h2load nghttp python3 timeout; do
    command -v "$tool" >/dev/null || die "'$tool' not found in PATH"
done

declare -A SERVER_PID=() SERVER_PORT=()
SERVER_NAMES=(sluice grpc-swift-2)
if [[ -n $BASELINE_BIN ]]; then
    [[ $BASELINE_LABEL =~ ^[A-Za-z0-9._-]+$ && $BASELINE_LABEL != sluice && $BASELINE_LABEL != grpc-swift-2 ]] \
        || die "BASELINE_LABEL '$BASELINE_LABEL' must be letters, digits, '.', '_' or '-', and not 'sluice' or 'grpc-swift-2'"
    # Next to the current build, so the two Sluice runs of a scenario are mostly back to back.
    SERVER_NAMES=(sluice "$BASELINE_LABEL" grpc-swift-2)
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-transport-bench.XXXXXX")

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local name pid
    for name in "${!SERVER_PID[@]}"; do
        pid=${SERVER_PID[$name]}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                log "server $name (pid $pid) ignored SIGTERM; sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [[ $KEEP_LOGS == 1 || $status != 0 ]]; then
        log "raw logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------------------------------------
# Build

if [[ $SKIP_BUILD != 1 ]]; then
    if [[ -z $BIN ]]; then
        log "building sluice (release) at $ROOT"
        (cd "$ROOT" && swift build -c release --product sluice) >&2
    fi
    if [[ -z $PEER_BIN ]]; then
        log "building grpc-swift-2 peer (release) in $PEER_DIR (first build takes several minutes)"
        (cd "$PEER_DIR" && swift build -c release --product GRPCSwiftPeer) >&2
    fi
fi
SLUICE_BIN=${BIN:-"$(cd "$ROOT" && swift build -c release --product sluice --show-bin-path)/sluice"}
PEER_BIN=${PEER_BIN:-"$(cd "$PEER_DIR" && swift build -c release --product GRPCSwiftPeer --show-bin-path)/GRPCSwiftPeer"}
[[ -x $SLUICE_BIN ]] || die "sluice binary missing: $SLUICE_BIN"
[[ -x $PEER_BIN ]] || die "peer binary missing: $PEER_BIN"
[[ -z $BASELINE_BIN || -x $BASELINE_BIN ]] || die "baseline binary missing or not executable: $BASELINE_BIN"

# ----------------------------------------------------------------------------------------------
# Servers

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# start_server NAME PORT CMD...: starts in the background and polls the port until it accepts.
start_server() {
    local name=$1 port=$2
    shift 2
    log "starting $name on port $port: $*"
    "$@" >"$WORK/$name.server.log" 2>&1 &
    local pid=$!
    SERVER_PID[$name]=$pid
    SERVER_PORT[$name]=$port
    local deadline=$((SECONDS + READY_TIMEOUT))
    until port_open "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$WORK/$name.server.log" >&2 || true
            die "$name exited before listening on port $port"
        fi
        ((SECONDS < deadline)) || { tail -n 30 "$WORK/$name.server.log" >&2; die "$name did not listen on port $port within ${READY_TIMEOUT}s"; }
        sleep 0.05
    done
    log "$name ready (pid $pid): $(head -n 1 "$WORK/$name.server.log")"
}

ensure_alive() {
    local name=$1
    kill -0 "${SERVER_PID[$name]}" 2>/dev/null || { tail -n 30 "$WORK/$name.server.log" >&2; die "$name (pid ${SERVER_PID[$name]}) died"; }
}

# utime+stime clock ticks of a process (fields 14 and 15 of /proc/PID/stat).
cpu_ticks() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    echo $((${12} + ${13}))
}

sluice_port=$(free_port)
SLUICE_CMD=("$SLUICE_BIN" serve --host "$HOST" --port "$sluice_port")
start_server sluice "$sluice_port" "${SLUICE_CMD[@]}"
peer_port=$(free_port)
PEER_CMD=("$PEER_BIN" "$peer_port" "$HOST")
start_server grpc-swift-2 "$peer_port" "${PEER_CMD[@]}"
BASELINE_CMD=()
if [[ -n $BASELINE_BIN ]]; then
    baseline_port=$(free_port)
    BASELINE_CMD=("$BASELINE_BIN" serve --host "$HOST" --port "$baseline_port")
    start_server "$BASELINE_LABEL" "$baseline_port" "${BASELINE_CMD[@]}"
fi

# ----------------------------------------------------------------------------------------------
# Scenarios: name frames size clients streams-per-client

SCENARIOS=(
    "A 100 64 10 10"
    "B 100 64 100 10"
    "C 1 64 1 1"
)
declare -A BODY=()
for spec in "${SCENARIOS[@]}"; do
    read -r sc frames size _ _ <<<"$spec"
    BODY[$sc]="$WORK/request-$sc.bin"
    python3 "$SUMMARIZE" body --frames "$frames" --size "$size" --interval-ms 0 --out "${BODY[$sc]}"
done

url_for() { echo "http://$HOST:${SERVER_PORT[$1]}$METHOD_PATH"; }
H2LOAD_HEADERS=(-H 'content-type: application/grpc' -H 'te: trailers')

# Correctness probe with nghttp, which (unlike h2load) shows trailers: grpc-status must be 0.
for spec in "${SCENARIOS[@]}"; do
    read -r sc frames size _ _ <<<"$spec"
    for name in "${SERVER_NAMES[@]}"; do
        nghttp -nv -d "${BODY[$sc]}" "${H2LOAD_HEADERS[@]}" "$(url_for "$name")" >"$WORK/probe-$sc-$name.verbose" 2>&1 \
            || die "nghttp probe of $name failed (see $WORK/probe-$sc-$name.verbose)"
        nghttp -d "${BODY[$sc]}" "${H2LOAD_HEADERS[@]}" "$(url_for "$name")" >"$WORK/probe-$sc-$name.body" 2>/dev/null \
            || die "nghttp body probe of $name failed"
        python3 "$SUMMARIZE" probe --server "$name" --verbose-log "$WORK/probe-$sc-$name.verbose" \
            --body "$WORK/probe-$sc-$name.body" --frames "$frames" --size "$size" >&2 \
            || die "$name returned a wrong response for scenario $sc"
    done
done

# ----------------------------------------------------------------------------------------------
# h2load runs

printf 'phase\tscenario\tserver\tround\tn\tc\tm\tframes\tsize\tstdout\tlog\tcmd\tcpu_before\tcpu_after\th2load_real\th2load_user\th2load_sys\texit\n' >"$WORK/manifest.tsv"

# run_h2load PHASE SCENARIO SERVER ROUND FRAMES SIZE C M (-n N | -D SECS)
run_h2load() {
    local phase=$1 sc=$2 name=$3 round=$4 frames=$5 size=$6 c=$7 m=$8 mode=$9 amount=${10}
    local id="$phase-$sc-$name-r$round"
    local cmd=(h2load "$mode" "$amount" -c "$c" -m "$m" -t 1 -d "${BODY[$sc]}" "${H2LOAD_HEADERS[@]}"
        "--log-file=$WORK/$id.log" "$(url_for "$name")")
    printf '%q ' "${cmd[@]}" >"$WORK/$id.cmd"
    ensure_alive "$name"
    local before after rc=0 times
    before=$(cpu_ticks "${SERVER_PID[$name]}")
    local TIMEFORMAT='%R %U %S'
    { time timeout "$H2LOAD_TIMEOUT" "${cmd[@]}" >"$WORK/$id.out" 2>&1 || rc=$?; } 2>"$WORK/$id.time"
    after=$(cpu_ticks "${SERVER_PID[$name]}")
    read -r t_real t_user t_sys <"$WORK/$id.time"
    ensure_alive "$name"
    local n=$amount
    [[ $mode == -n ]] || n=0
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$phase" "$sc" "$name" "$round" "$n" "$c" "$m" "$frames" "$size" "$id.out" "$id.log" "$id.cmd" \
        "$before" "$after" "$t_real" "$t_user" "$t_sys" "$rc" >>"$WORK/manifest.tsv"
    [[ $rc == 0 ]] || { cat "$WORK/$id.out" >&2; die "h2load failed ($rc) for $id"; }
    log "$(printf '%-7s %s %-13s r%s: %s' "$phase" "$sc" "$name" "$round" "$(grep -E '^finished in' "$WORK/$id.out")")"
}

# Other work on the machine skews everything: record it, warn, and optionally wait for quiet.
IDLE_WAIT_MAX=${IDLE_WAIT_MAX:-0}
idle_deadline=$((SECONDS + IDLE_WAIT_MAX))
while :; do
    load1=$(cut -d' ' -f1 /proc/loadavg)
    python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "$load1" "${IDLE_LOAD_MAX:-1.0}" && break
    ((SECONDS < idle_deadline)) || { log "WARNING: 1-min load average is $load1 on $(nproc) cores before measuring; results include contention"; break; }
    sleep 5
done
LOADAVG_BEFORE=$(cat /proc/loadavg)
# Second `top` sample = CPU share over the last second (the first is since process start).
OTHER_PROCS=$(COLUMNS=200 top -b -w 200 -n 2 -d 1 -o %CPU 2>/dev/null | awk '/^top -/ { block++ } block == 2 && $1 ~ /^[0-9]+$/ && n < 8 { printf "%s%% %s; ", $9, $12; n++ }' || true)

# Warm-up, alternating servers; its req/s sizes -n for the measured runs (~MEASURE_SECONDS each).
declare -A N=()
for spec in "${SCENARIOS[@]}"; do
    read -r sc frames size c m <<<"$spec"
    for name in "${SERVER_NAMES[@]}"; do
        run_h2load warmup "$sc" "$name" 0 "$frames" "$size" "$c" "$m" -D "$WARMUP_SECONDS"
        rps=$(sed -nE 's/^finished in .*, ([0-9.]+) req\/s.*/\1/p' "$WORK/warmup-$sc-$name-r0.out")
        [[ -n $rps ]] || die "could not read req/s from the $sc/$name warm-up"
        # -n = req/s x MEASURE_SECONDS, at least 5 x (c x m) so ramp-up/down stay small, rounded up to a multiple of c.
        N["$sc/$name"]=$(awk -v rps="$rps" -v secs="$MEASURE_SECONDS" -v c="$c" -v m="$m" \
            'BEGIN { n = int(rps * secs); if (n < 5 * c * m) n = 5 * c * m; if (n < 100) n = 100; print int((n + c - 1) / c) * c }')
    done
done

for round in $(seq 1 "$ROUNDS"); do
    # Rotate the server order by one each round, so no server always runs first (or right after another).
    shift_by=$(((round - 1) % ${#SERVER_NAMES[@]}))
    order=("${SERVER_NAMES[@]:shift_by}" "${SERVER_NAMES[@]:0:shift_by}")
    for spec in "${SCENARIOS[@]}"; do
        read -r sc frames size c m <<<"$spec"
        for name in "${order[@]}"; do
            run_h2load measure "$sc" "$name" "$round" "$frames" "$size" "$c" "$m" -n "${N[$sc/$name]}"
        done
    done
done

# ----------------------------------------------------------------------------------------------
# Describe the run and summarise

LOADAVG_AFTER=$(cat /proc/loadavg)
MEASURED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
export LOADAVG_BEFORE LOADAVG_AFTER OTHER_PROCS MEASURED_AT PEER_DIR
threads_of() { ls "/proc/$1/task" 2>/dev/null | wc -l; }
export WORK ROOT ROUNDS MEASURE_SECONDS WARMUP_SECONDS HOST METHOD_PATH
export SLUICE_CMD_STR="${SLUICE_CMD[*]}" PEER_CMD_STR="${PEER_CMD[*]}"
export SLUICE_READY="$(head -n 1 "$WORK/sluice.server.log")" PEER_READY="$(head -n 1 "$WORK/grpc-swift-2.server.log")"
export SLUICE_THREADS="$(threads_of "${SERVER_PID[sluice]}")" PEER_THREADS="$(threads_of "${SERVER_PID[grpc-swift-2]}")"
export BASELINE_LABEL BASELINE_CMD_STR="${BASELINE_CMD[*]}" BASELINE_READY= BASELINE_THREADS=0 BASELINE_COMMIT=
if [[ -n $BASELINE_BIN ]]; then
    BASELINE_READY="$(head -n 1 "$WORK/$BASELINE_LABEL.server.log")"
    BASELINE_THREADS="$(threads_of "${SERVER_PID[$BASELINE_LABEL]}")"
    # The checkout the baseline was built in, when it lives in one (e.g. <checkout>/.build/release/sluice).
    BASELINE_COMMIT="$(git -C "$(dirname "$BASELINE_BIN")" rev-parse HEAD 2>/dev/null || echo unknown)"
fi
# The checkout the measured Sluice was built in (this one unless BIN points elsewhere).
SLUICE_SRC="$(git -C "$(dirname "$SLUICE_BIN")" rev-parse --show-toplevel 2>/dev/null || echo "$ROOT")"
export GIT_COMMIT="$(git -C "$SLUICE_SRC" rev-parse HEAD 2>/dev/null || echo unknown)"
export GIT_DIRTY="$(git -C "$SLUICE_SRC" status --porcelain -- Sources Package.swift 2>/dev/null | awk '{ print $2 }' | tr '\n' ' ')"
python3 - <<'PY'
import json, os, glob
env = os.environ
work = env["WORK"]
def cmdline(sc):
    # Measured commands, with the work dir and port shown symbolically.
    paths = sorted(glob.glob(os.path.join(work, "measure-%s-*-r1.cmd" % sc)))
    out = []
    for p in paths:
        text = open(p).read().strip().replace(work + "/", "$WORK/")
        out.append(text)
    return out
request_json = {}
for sc in ("A", "B", "C"):
    body = open(os.path.join(work, "request-%s.bin" % sc), "rb").read()
    request_json[sc] = body[5:].decode()
commands = [
    "# build",
    "(cd $REPO && swift build -c release --product sluice)",
    "(cd $REPO/Benchmarks/transport/GRPCSwiftPeer && swift build -c release --product GRPCSwiftPeer)",
    "# servers",
    env["SLUICE_CMD_STR"].replace(env["ROOT"], "$REPO"),
    env["PEER_CMD_STR"].replace(env["ROOT"], "$REPO"),
] + (["# baseline (built at commit %s)" % env["BASELINE_COMMIT"], env["BASELINE_CMD_STR"]] if env["BASELINE_CMD_STR"] else []) + [
    "# request bodies: gRPC envelope (flag 0, 4-byte big-endian length) + JSON",
] + ["#   %s: %s" % (sc, j) for sc, j in request_json.items()] + [
    "# warm-up (sizes -n): same as below with -D %s instead of -n" % env["WARMUP_SECONDS"],
    "# measured runs (round 1; later rounds identical, server order alternates)",
]
for sc in ("A", "B", "C"):
    commands += cmdline(sc)
resolved = {}
try:
    pins = json.load(open(os.path.join(env["PEER_DIR"], "Package.resolved")))["pins"]
    resolved = {p["identity"]: p["state"].get("version", p["state"].get("revision")) for p in pins}
except (OSError, KeyError, ValueError):
    pass
run = {
    "measured_at_utc": env["MEASURED_AT"],
    "peer_resolved_packages": resolved,
    "git_commit": env["GIT_COMMIT"],
    "git_dirty": bool(env.get("GIT_DIRTY", "").strip()),
    "git_dirty_files": env.get("GIT_DIRTY", "").split(),
    "rounds": int(env["ROUNDS"]),
    "measure_seconds": float(env["MEASURE_SECONDS"]),
    "warmup_seconds": float(env["WARMUP_SECONDS"]),
    "method": env["METHOD_PATH"],
    "loadavg_before_measuring": env["LOADAVG_BEFORE"],
    "loadavg_after_measuring": env["LOADAVG_AFTER"],
    "top_processes_before_measuring": env["OTHER_PROCS"],
    "request_json": request_json,
    "commands": commands,
    "servers": [
        {"name": "sluice", "command": env["SLUICE_CMD_STR"].replace(env["ROOT"], "$REPO"),
         "description": "Sluice (libnghttp2 + epoll event loops), default --event-loops = one per online core; other flags default",
         "ready_line": env["SLUICE_READY"], "threads_at_end": int(env["SLUICE_THREADS"])},
        {"name": "grpc-swift-2", "command": env["PEER_CMD_STR"].replace(env["ROOT"], "$REPO"),
         "description": "grpc-swift-2 2.4.3 + grpc-swift-nio-transport 2.9.2, HTTP2ServerTransport.Posix plaintext, "
                        "default config; NIO MultiThreadedEventLoopGroup.singleton (System.coreCount threads), handlers on the Swift concurrency global executor; Codable JSON serializers",
         "ready_line": env["PEER_READY"], "threads_at_end": int(env["PEER_THREADS"])},
    ],
}
if env["BASELINE_CMD_STR"]:
    label = env["BASELINE_LABEL"]
    run["baseline"] = {"name": label, "git_commit": env["BASELINE_COMMIT"]}
    run["servers"].insert(1, {
        "name": label, "command": env["BASELINE_CMD_STR"],
        "description": "the baseline Sluice build (commit %s), same flags as `sluice`" % env["BASELINE_COMMIT"],
        "ready_line": env["BASELINE_READY"], "threads_at_end": int(env["BASELINE_THREADS"])})
json.dump(run, open(os.path.join(work, "run.json"), "w"), indent=2)
PY

rc=0
python3 "$SUMMARIZE" summarize --work "$WORK" --out-md "$HERE/RESULTS.md" --out-json "$HERE/RESULTS.json" || rc=$?
log "wrote $HERE/RESULTS.md and $HERE/RESULTS.json"
exit "$rc"
