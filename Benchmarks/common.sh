# Shared by the benchmark scripts (sourced after `cd` to the repository root and setting OUT):
# the Sluice binary in $BIN, a throwaway certificate in $OUT, `start_simulator LOOPS` (a TLS
# `sluice simulate`, its port in $SIMULATOR_PORT), and cleanup of $SERVER_PID/$SIMULATOR_PID on exit.
# $BIN is the caller's `BIN=...` if given, else this checkout's release build, built first unless
# SKIP_BUILD=1.

if [ -z "${BIN:-}" ]; then
  [ "${SKIP_BUILD:-0}" = 1 ] || swift build -c release --product sluice >/dev/null
  BIN=$(swift build -c release --show-bin-path)/sluice
fi
[ -x "$BIN" ] || { echo "sluice binary missing: $BIN (pass BIN=..., or build it: unset SKIP_BUILD)" >&2; exit 1; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null

SERVER_PID=
SIMULATOR_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  [ -n "$SIMULATOR_PID" ] && kill "$SIMULATOR_PID" 2>/dev/null || true
}
trap cleanup EXIT

# Waits for the first line of $1 (a process's stdout) and prints the port it names.
listening_port() {
  local line=""
  for _ in $(seq 300); do
    line=$(head -n1 "$1" 2>/dev/null || true)
    [ -n "$line" ] && break
    sleep 0.1
  done
  [[ $line =~ 127\.0\.0\.1:([0-9]+) ]] || { echo "no listening line in $1: $line" >&2; return 1; }
  echo "${BASH_REMATCH[1]}"
}

start_simulator() {
  "$BIN" simulate --port 0 --event-loops "$1" --tls-cert "$OUT/cert.pem" --tls-key "$OUT/key.pem" \
    >"$OUT/simulator.out" 2>"$OUT/simulator.err" &
  SIMULATOR_PID=$!
  SIMULATOR_PORT=$(listening_port "$OUT/simulator.out")
}
