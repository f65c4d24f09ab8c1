#!/usr/bin/env bash
# The gateway benchmark: the same streamed answers through three gateways in front of the same TLS
# `sluice simulate`, in one run, alternating, each measured the same way. Writes RESULTS.md and RESULTS.json here.
#
# Gateways (each started fresh for every workload, stopped after it):
#   sluice      `sluice serve`, read through its SSE routes (POST /v1/streams, GET …/events) by client.py;
#   sluice-rpc  the same server and flags, SendMessage over h2c driven by `sluice loadtest` (the RPC path);
#   nghttpx     Debian nghttp2-proxy, a plain reverse proxy of the simulator's POST /v1/messages SSE
#               (HTTP/1.1 in front, HTTP/2 over TLS behind, like Sluice's libcurl): it parses no event, the floor;
#   litellm     LiteLLM proxy (PyPI litellm[proxy], one uvicorn worker, no database) on its Anthropic route
#               POST /v1/messages, the simulator as its Anthropic api_base.
# client.py (Python asyncio, HTTP/1.1, one connection per stream) drives sluice, nghttpx, litellm and the
# direct calls to the simulator, so those rows share one client and one protocol; sluice-rpc is the RPC path.
#
# Workloads: LEVELS "streams:interval_ms" pairs, each holding `streams` answers in flight (2 × streams started
# at the rate that holds it) of TOKENS output tokens (about 0.57 × TOKENS text deltas, one per interval);
# then time to first token at low load: TTFT_STREAMS short answers, TTFT_CONCURRENCY at a time, through each
# gateway and straight to the simulator. LiteLLM cannot carry these rates on this machine (it spends
# milliseconds of CPU per delta), so it runs each level with streams ÷ LITELLM_SCALE in flight.
#
# Measured per gateway and workload: CPU (user + system, from /proc/PID/stat, of the gateway's processes only)
# per delivered text delta; RSS (sum over its processes, sampled every 0.2 s) peak minus idle (after a warm-up)
# per stream in flight; the client's end-to-end delta latency (simulator stamp → client read) and time to first
# token; Sluice's own share (its sluice_event_delivery_latency_seconds histogram); the machine's floor for the
# same message rate (Benchmarks/streaming/floor.c); load average and steal.
#
# Knobs [defaults]: LEVELS ["1000:200 10000:2000"] (empty: time to first token only), TOKENS [40], GATEWAYS ["sluice sluice-rpc nghttpx litellm"],
# LITELLM_SCALE [10], TTFT_STREAMS [200], TTFT_CONCURRENCY [10], FLOOR_SECONDS [5], LITELLM_VERSION [1.108.7],
# BIN [this checkout's release build], BIN_COMMIT [] the commit BIN was built at (when BIN is a copy), SKIP_BUILD [0], SMOKE [0] (1 = a tiny run of every gateway and workload,
# to check the script; its results go to $OUT only, not to RESULTS.*).
set -euo pipefail
[ -z "${BIN:-}" ] || BIN=$(realpath -s "$BIN")
cd "$(dirname "$0")/../.."
HERE=Benchmarks/gateway
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  LEVELS=${LEVELS:-"20:50"}; TTFT_STREAMS=${TTFT_STREAMS:-10}; LITELLM_SCALE=${LITELLM_SCALE:-2}; FLOOR_SECONDS=${FLOOR_SECONDS:-1}
fi
LEVELS=${LEVELS-"1000:200 10000:2000"}
TOKENS=${TOKENS:-40}
GATEWAYS=${GATEWAYS:-"sluice sluice-rpc nghttpx litellm"}
LITELLM_SCALE=${LITELLM_SCALE:-10}
TTFT_STREAMS=${TTFT_STREAMS:-200}
TTFT_CONCURRENCY=${TTFT_CONCURRENCY:-10}
FLOOR_SECONDS=${FLOOR_SECONDS:-5}
LITELLM_VERSION=${LITELLM_VERSION:-1.108.7}
OUT=$(mktemp -d /tmp/sluice-gateway-bench.XXXXXX)
echo "work files: $OUT" >&2

# Installs what the gateways need: nghttpx from Debian, LiteLLM into its own venv here (not committed).
command -v nghttpx >/dev/null || apt-get install -y nghttp2-proxy >&2
VENV=$HERE/.venv
if [ ! -x "$VENV/bin/litellm" ] || ! "$VENV/bin/pip" show litellm 2>/dev/null | grep -qx "Version: $LITELLM_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION" >&2
fi

. Benchmarks/common.sh
GATEWAY_PID=
stop_gateway() {
  [ -n "$GATEWAY_PID" ] || return 0
  kill "$GATEWAY_PID" 2>/dev/null || true
  wait "$GATEWAY_PID" 2>/dev/null || true
  GATEWAY_PID=
}
trap 'stop_gateway; cleanup' EXIT
start_simulator 1
clang -O2 -o "$OUT/floor" Benchmarks/streaming/floor.c
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() {  # URL: until it answers at all (any status)
  for _ in $(seq 1200); do curl -s -o /dev/null "$1" && return 0; sleep 0.25; done
  echo "no answer from $1" >&2; return 1
}
# The gateway's process and its descendants (nghttpx forks a worker; LiteLLM may start uvicorn's).
tree_pids() { local p; echo "$1"; for p in $(pgrep -P "$1" || true); do tree_pids "$p"; done; }
tree_cpu_seconds() { local p; for p in $(tree_pids "$1"); do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || true; done | awk '{s += $1} END {print s / 100}'; }
tree_rss_kib() { local p; for p in $(tree_pids "$1"); do awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || true; done | awk '{s += $1} END {print s + 0}'; }
cpu_and_steal() { awk '/^cpu / {total = 0; for (i = 2; i <= 9; i++) total += $i; print total, $9}' /proc/stat; }

# start_gateway NAME TAG SIMULATION MAX_ACTIVE: starts it, sets GATEWAY_PID and GATEWAY_URL.
start_gateway() {
  local name=$1 tag=$2 simulation=$3 max_active=$4 port
  case $name in
    sluice | sluice-rpc)
      "$BIN" serve --port 0 --max-active "$max_active" --max-queued 0 --max-streams-per-connection 1000 \
        --upstream-url "https://127.0.0.1:$SIMULATOR_PORT" --upstream-is-simulator --ca-bundle "$OUT/cert.pem" \
        --log-level warning >"$OUT/gateway-$tag.out" 2>"$OUT/gateway-$tag.err" &
      GATEWAY_PID=$!
      port=$(listening_port "$OUT/gateway-$tag.out")
      ;;
    nghttpx)
      port=$(free_port)
      # --insecure: nghttpx checks a backend's certificate against a DNS name only, and the simulator's
      # throwaway certificate names 127.0.0.1; the TLS work is the same.
      nghttpx --conf=/dev/null --frontend="127.0.0.1,$port;no-tls" \
        --backend="127.0.0.1,$SIMULATOR_PORT;;proto=h2;tls" --insecure --workers=1 --no-ocsp \
        --log-level=WARN --errorlog-file="$OUT/gateway-$tag.err" >"$OUT/gateway-$tag.out" 2>&1 &
      GATEWAY_PID=$!
      wait_http "http://127.0.0.1:$port/"
      ;;
    litellm)
      port=$(free_port)
      # LiteLLM forwards no client header to the provider, so the scenario is the model's extra header.
      cat >"$OUT/litellm-$tag.yaml" <<EOF
model_list:
  - model_name: claude-sonnet-4-5
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_base: https://127.0.0.1:$SIMULATOR_PORT
      api_key: sk-ant-benchmark
      extra_headers: {"sluice-simulation": $(python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$simulation")}
general_settings:
  master_key: sk-benchmark-3f9c2a7e5b1d4c8a9e6f0b2d7c4a1e5f
litellm_settings:
  ssl_verify: $OUT/cert.pem
  telemetry: false
EOF
      SSL_CERT_FILE="$OUT/cert.pem" LITELLM_LOG=ERROR "$VENV/bin/litellm" --config "$OUT/litellm-$tag.yaml" \
        --host 127.0.0.1 --port "$port" --num_workers 1 >"$OUT/gateway-$tag.out" 2>"$OUT/gateway-$tag.err" &
      GATEWAY_PID=$!
      wait_http "http://127.0.0.1:$port/health/liveliness"
      ;;
    *) echo "unknown gateway $name (sluice, sluice-rpc, nghttpx, litellm)" >&2; exit 1 ;;
  esac
  GATEWAY_URL="http://127.0.0.1:$port"
}

client_mode() { case $1 in sluice) echo sluice-sse ;; *) echo anthropic ;; esac; }

# drive NAME URL STREAMS CONCURRENCY RATE SIMULATION OUTFILE
drive() {
  if [ "$1" = sluice-rpc ]; then
    "$BIN" loadtest --target "$2" --method send-message --streams "$3" --concurrency "$4" --rate "$5" \
      --streams-per-connection 1000 --event-loops 1 --simulation "$6" --json >"$7" 2>"$7.err" || true
  else
    python3 "$HERE/client.py" --url "$2" --mode "$(client_mode "$1")" --streams "$3" --concurrency "$4" \
      --rate "$5" --simulation "$6" >"$7" 2>"$7.err"
  fi
}

# run_level NAME STREAMS INTERVAL_MS: one gateway, one sustained level.
run_level() {
  local name=$1 streams=$2 interval=$3
  [ "$name" = litellm ] && streams=$(( (streams + LITELLM_SCALE - 1) / LITELLM_SCALE ))
  local tag="level-$2-$3-$name"
  local simulation="{\"output_tokens\":$TOKENS,\"token_interval_ms\":$interval,\"stamp_deltas\":true,\"seed\":1}"
  start_gateway "$name" "$tag" "$simulation" "$streams"
  # Warm-up (first upstream connection, lazy imports), then the idle RSS.
  drive "$name" "$GATEWAY_URL" 10 10 1000 "{\"output_tokens\":8,\"stamp_deltas\":true}" "$OUT/warmup-$tag.json"
  local idle; idle=$(tree_rss_kib "$GATEWAY_PID")
  ( peak=0; while kill -0 "$GATEWAY_PID" 2>/dev/null; do r=$(tree_rss_kib "$GATEWAY_PID"); [ "${r:-0}" -gt "$peak" ] && peak=$r && echo "$peak" >"$OUT/peak-$tag"; sleep 0.2; done ) &
  local sampler=$!
  local duration_ms=$(( (TOKENS * 57 / 100) * interval ))
  local rate; rate=$(python3 -c "print(max(1.0, $streams * 1000 / $duration_ms))")
  local cpu_before machine_before; cpu_before=$(tree_cpu_seconds "$GATEWAY_PID"); machine_before=$(cpu_and_steal)
  drive "$name" "$GATEWAY_URL" $((2 * streams)) "$streams" "$rate" "$simulation" "$OUT/client-$tag.json"
  echo "$(tree_cpu_seconds "$GATEWAY_PID") $cpu_before" | awk '{print $1 - $2}' >"$OUT/cpu-$tag"
  echo "$machine_before $(cpu_and_steal)" | awk '{print ($4 - $2) / ($3 - $1) * 100}' >"$OUT/steal-$tag"
  case $name in sluice*) curl -sf "$GATEWAY_URL/metrics" >"$OUT/metrics-$tag" ;; esac
  stop_gateway
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  echo "$idle $(cat "$OUT/peak-$tag" 2>/dev/null || echo "$idle")" >"$OUT/rss-$tag"
  local measured_rate
  measured_rate=$(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(max(1, round(r["latency_ms"]["end_to_end"]["count"] / r["wall_seconds"])))' "$OUT/client-$tag.json")
  "$OUT/floor" "$measured_rate" "$FLOOR_SECONDS" >"$OUT/floor-$tag"
  echo "done: $tag" >&2
}

# run_ttft NAME: time to first token at low load; NAME "direct" calls the simulator itself.
TTFT_SIMULATION='{"output_tokens":16,"token_interval_ms":10,"stamp_deltas":true,"seed":2}'
run_ttft() {
  local name=$1 tag="ttft-$1"
  if [ "$name" = direct ]; then
    python3 "$HERE/client.py" --url "https://127.0.0.1:$SIMULATOR_PORT" --ca "$OUT/cert.pem" --mode anthropic \
      --streams "$TTFT_STREAMS" --concurrency "$TTFT_CONCURRENCY" --simulation "$TTFT_SIMULATION" >"$OUT/client-$tag.json"
  else
    start_gateway "$name" "$tag" "$TTFT_SIMULATION" 64
    drive "$name" "$GATEWAY_URL" 10 10 1000 "$TTFT_SIMULATION" "$OUT/warmup-$tag.json"
    drive "$name" "$GATEWAY_URL" "$TTFT_STREAMS" "$TTFT_CONCURRENCY" 100000 "$TTFT_SIMULATION" "$OUT/client-$tag.json"
    stop_gateway
  fi
  echo "done: $tag" >&2
}

read -r -a NAMES <<<"$GATEWAYS"
round=0
for level in $LEVELS; do
  # Rotate the order by one per workload, so no gateway always runs first.
  shift_by=$((round % ${#NAMES[@]})); round=$((round + 1))
  for name in "${NAMES[@]:shift_by}" "${NAMES[@]:0:shift_by}"; do
    run_level "$name" "${level%%:*}" "${level##*:}"
  done
done
# sluice-rpc's client reports its first event (message_start), not its first token: TTFT is client.py's rows only.
TTFT_NAMES=(direct)
for name in "${NAMES[@]}"; do [ "$name" = sluice-rpc ] || TTFT_NAMES+=("$name"); done
TTFT_NAMES+=(direct)
for name in "${TTFT_NAMES[@]}"; do
  [ "$name" = direct ] && [ -f "$OUT/client-ttft-direct.json" ] && mv "$OUT/client-ttft-direct.json" "$OUT/client-ttft-direct-first.json"
  run_ttft "$name"
done

DEST=$HERE
[ "$SMOKE" = 1 ] && DEST=$OUT
python3 "$HERE/summarize.py" --work "$OUT" --dest "$DEST" --levels "$LEVELS" --gateways "$GATEWAYS" \
  --tokens "$TOKENS" --litellm-scale "$LITELLM_SCALE" --litellm-version "$("$VENV/bin/pip" show litellm | awk '/^Version/ {print $2}')" \
  --nghttpx-version "$(nghttpx --version | head -1)" --sluice-bin "$BIN" --load-before "$LOAD_BEFORE" --smoke "$SMOKE" \
  --sluice-commit "${BIN_COMMIT:-}"
