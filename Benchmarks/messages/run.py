#!/usr/bin/env python3
"""Time to first token and server CPU per text delta: `POST /v1/messages` (the Anthropic SSE front door) against
SendMessage (gRPC, JSON codec), same workload, same server, same run. Writes RESULTS.md and RESULTS.json here.

One `sluice serve` (its built-in simulator upstream, so the simulator's CPU is in both figures alike) takes
ROUNDS alternating phases per route; each phase runs STREAMS streams of TOKENS text deltas
(`token_interval_ms` INTERVAL_MS), CONCURRENCY at a time, from one client process over h2c: grpcio for
SendMessage, httpx2 (what the anthropic SDK is built on) for /v1/messages, both reading raw events without
an SDK's parsing on top. Time to first token: request sent → first text delta received, at the client.
CPU: the server's utime + stime (/proc/PID/stat) over the phase, divided by the text deltas delivered.

Usage: .venv/bin/python Benchmarks/messages/run.py [BIN] (default: .build/release/sluice, else .build/debug/sluice).
Knobs (environment): STREAMS [150], CONCURRENCY [10], TOKENS [40], INTERVAL_MS [10],
ROUNDS [2].
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx2 as httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
STREAMS = int(os.environ.get("STREAMS", 150))
CONCURRENCY = int(os.environ.get("CONCURRENCY", 10))
TOKENS = int(os.environ.get("TOKENS", 40))
INTERVAL_MS = int(os.environ.get("INTERVAL_MS", 10))
ROUNDS = int(os.environ.get("ROUNDS", 2))
TICKS = os.sysconf("SC_CLK_TCK")


def request(seed: int) -> dict:
    return {"model": "claude-sim-1", "max_tokens": 1024, "messages": [{"role": "user", "content": "Benchmark."}],
            "simulation": {"seed": seed, "output_tokens": TOKENS, "token_interval_ms": INTERVAL_MS}}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat)


def rpc_stream(send, seed: int) -> tuple[float, int]:
    start = time.perf_counter()
    first, deltas = None, 0
    for event in send(request(seed)):
        if event["type"] == "message_delta":
            deltas += 1
            first = first or time.perf_counter() - start
    return first, deltas


def messages_stream(http, url: str, seed: int) -> tuple[float, int]:
    start = time.perf_counter()
    first, deltas = None, 0
    with http.stream("POST", url, json={**request(seed), "stream": True}, headers={"x-api-key": "bench"}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and '"text_delta"' in line:
                deltas += 1
                first = first or time.perf_counter() - start
    return first, deltas


def phase(pid: int, run_one) -> dict:
    before = cpu_seconds(pid)
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(run_one, range(STREAMS)))
    cpu = cpu_seconds(pid) - before
    return {"ttft": [first for first, _ in results], "deltas": sum(deltas for _, deltas in results), "cpu": cpu}


def main() -> None:
    binary = sys.argv[1] if len(sys.argv) > 1 else next(
        str(path) for path in (ROOT / ".build/release/sluice", ROOT / ".build/debug/sluice") if path.exists())
    server = subprocess.Popen([binary, "serve", "--port", "0", "--max-active", str(CONCURRENCY * 2)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        match = re.match(r"sluice listening on (\S+):(\d+) ", server.stdout.readline())
        host, port = match.group(1), int(match.group(2))
        channel = grpc.insecure_channel(f"{host}:{port}", options=[("grpc.enable_retries", 0)])
        send = channel.unary_stream("/sluice.v1.StreamingService/SendMessage",
                                    request_serializer=lambda m: json.dumps(m).encode(), response_deserializer=json.loads)
        http = httpx.Client(http2=True, http1=False, timeout=60, limits=httpx.Limits(max_connections=1))
        url = f"http://{host}:{port}/v1/messages"
        routes = {"SendMessage (gRPC)": lambda seed: rpc_stream(send, seed),
                  "POST /v1/messages (SSE)": lambda seed: messages_stream(http, url, seed)}
        totals = {name: {"ttft": [], "deltas": 0, "cpu": 0.0} for name in routes}
        phase(server.pid, routes["SendMessage (gRPC)"])  # warm-up, not counted
        for round_index in range(ROUNDS):
            order = list(routes) if round_index % 2 == 0 else list(reversed(routes))
            for name in order:
                result = phase(server.pid, routes[name])
                totals[name]["ttft"] += result["ttft"]
                totals[name]["deltas"] += result["deltas"]
                totals[name]["cpu"] += result["cpu"]
        http.close()
        channel.close()
    finally:
        server.kill()
        server.wait()

    rows = []
    for name, total in totals.items():
        ttft = sorted(total["ttft"])
        rows.append({
            "route": name, "streams": len(ttft), "deltas": total["deltas"],
            "ttft_p50_ms": round(statistics.median(ttft) * 1000, 2),
            "ttft_p99_ms": round(ttft[int(len(ttft) * 0.99) - 1] * 1000, 2),
            "server_cpu_us_per_delta": round(total["cpu"] / total["deltas"] * 1e6, 2),
        })
    setup = {"binary": binary, "streams_per_phase": STREAMS, "concurrency": CONCURRENCY, "tokens": TOKENS,
             "interval_ms": INTERVAL_MS, "rounds": ROUNDS, "cpus": os.cpu_count(), "machine": platform.machine(),
             "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                      text=True).stdout.strip()}
    (HERE / "RESULTS.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
    lines = ["# /v1/messages against SendMessage", "",
             f"`Benchmarks/messages/run.py`, commit {setup['commit']}, {Path(binary).parent.name} build, {setup['cpus']} CPUs: "
             f"{ROUNDS} alternating rounds per route of {STREAMS} streams × {TOKENS} deltas "
             f"({INTERVAL_MS} ms apart), {CONCURRENCY} concurrent, one server with its built-in simulator.", "",
             "| route | streams | text deltas | TTFT p50 (ms) | TTFT p99 (ms) | server CPU per delta (µs) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['route']} | {row['streams']} | {row['deltas']} | {row['ttft_p50_ms']} | {row['ttft_p99_ms']} "
                     f"| {row['server_cpu_us_per_delta']} |")
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
