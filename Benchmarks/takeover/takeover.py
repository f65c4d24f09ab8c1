"""Takeover time (issue 19): from an owner's kill -9 to the first continued event reaching a reattached client.

Starts redis-server, `sluice simulate` and two replicas A and B sharing the store (default lease: --lease-ttl 5s,
--lease-renew 1s unless LEASE_ARGS says otherwise), then STREAMS long streams on A, each read by an SSE client on A.
Once every client has read a few events, A is killed with SIGKILL; each client notices its connection drop and
reattaches at once to B with `Last-Event-ID` = its last seq. B follows the log, finds the lease lapsed (its follower
looks when the lease would lapse), claims the stream and continues it: the first event of the continuation is the
`upstream_retry` event with reason `replica_lost`. Takeover time = its receipt − the kill (one monotonic clock).
Also checked: every seq once per stream, each stream ends OK. Standard library only; writes JSON to --out.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(proc: subprocess.Popen, prefix: str) -> int:
    """The port of a `… listening on HOST:PORT …` line."""
    line = proc.stdout.readline().strip()
    assert prefix in line, line
    return int(re.search(r"listening on [^ ]+:(\d+)", line).group(1))


def sse(port: int, path: str, headers: dict | None = None):
    """Yields (seq, type, receipt monotonic ns) of an SSE stream until it ends or the connection drops."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path, headers={"accept": "text/event-stream", **(headers or {})})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"GET {path} on {port}: {response.status} {response.read()[:200]!r}")
        seq, kind = None, None
        while True:
            try:
                line = response.readline()
            except (OSError, http.client.HTTPException):
                return
            if not line:
                return
            line = line.rstrip(b"\r\n")
            if line.startswith(b"id:"):
                seq = int(line[3:].strip())
            elif line.startswith(b"event:"):
                kind = line[6:].strip().decode()
            elif line == b"" and seq is not None:
                yield seq, kind, time.monotonic_ns()
                seq, kind = None, None
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30, help="each stream's length")
    parser.add_argument("--lease-args", default="")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    lease = args.lease_args.split()
    directory = tempfile.mkdtemp(prefix="sluice-takeover-bench.")
    redis_port = free_port()
    processes = []
    try:
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", directory,
                                  "--save", "", "--appendonly", "no"], stdout=subprocess.PIPE, text=True)
        processes.append(redis)
        for line in redis.stdout:
            if "Ready to accept connections" in line:
                break
        simulator = subprocess.Popen([args.bin, "simulate", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        processes.append(simulator)
        simulator_url = "http://127.0.0.1:%d" % listening(simulator, "listening on")
        replicas = {}
        for name in "ab":
            proc = subprocess.Popen([args.bin, "serve", "--port", "0", "--store", f"redis://127.0.0.1:{redis_port}",
                                     "--replica-id", name, "--upstream-url", simulator_url, "--upstream-is-simulator",
                                     "--log-level", "warning", *lease],
                                    stdout=subprocess.PIPE, stderr=open(os.path.join(directory, f"{name}.err"), "w"), text=True)
            processes.append(proc)
            replicas[name] = (proc, listening(proc, "listening"))
        for _, port in replicas.values():
            while b"sluice_store_up 1" not in metrics(port):
                time.sleep(0.05)
        (a_proc, a_port), (_, b_port) = replicas["a"], replicas["b"]

        tokens = 60
        started = []
        for index in range(args.streams):
            body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": [{"role": "user", "content": "hello"}],
                               "simulation": {"seed": index, "output_tokens": tokens,
                                              "token_interval_ms": args.seconds * 1000 / tokens}})
            connection = http.client.HTTPConnection("127.0.0.1", a_port, timeout=30)
            connection.request("POST", "/v1/streams", body=body, headers={"content-type": "application/json"})
            response = connection.getresponse()
            created = json.loads(response.read())
            connection.close()
            assert response.status == 201, created
            started.append(created["stream_id"])

        killed_at = [0]
        killed = threading.Event()
        ready = threading.Semaphore(0)
        results = {}

        def client(stream_id: str) -> None:
            seqs, kinds, first_continued = [], [], None
            announced = False
            for seq, kind, _ in sse(a_port, f"/v1/streams/{stream_id}/events"):
                seqs.append(seq)
                kinds.append(kind)
                if len(seqs) == 3 and not announced:
                    announced = True
                    ready.release()
            if not announced:
                ready.release()
            killed.wait()
            reattached_at = time.monotonic_ns()
            for seq, kind, received in sse(b_port, f"/v1/streams/{stream_id}/events", {"last-event-id": str(seqs[-1])}):
                seqs.append(seq)
                kinds.append(kind)
                if first_continued is None and kind == "upstream_retry":
                    first_continued = received
            results[stream_id] = {"seqs": seqs, "last": kinds[-1] if kinds else None, "reattached_ns": reattached_at,
                                  "first_continued_ns": first_continued}

        threads = [threading.Thread(target=client, args=(stream_id,), daemon=True) for stream_id in started]
        for thread in threads:
            thread.start()
        for _ in started:
            ready.acquire()
        killed_at[0] = time.monotonic_ns()
        a_proc.send_signal(signal.SIGKILL)
        a_proc.wait()
        killed.set()
        for thread in threads:
            thread.join(args.seconds + 60)
        streams = []
        for stream_id in started:
            result = results.get(stream_id, {})
            seqs = result.get("seqs", [])
            first = result.get("first_continued_ns")
            streams.append({"stream_id": stream_id, "takeover_ms": (first - killed_at[0]) / 1e6 if first else None,
                            "every_seq_once": seqs == list(range(1, len(seqs) + 1)), "last_event": result.get("last"),
                            "events": len(seqs)})
        json.dump({"streams": streams, "lease_args": lease, "b_metrics": metrics(b_port).decode()}, open(args.out, "w"), indent=1)
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def metrics(port: int) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/metrics")
    body = connection.getresponse().read()
    connection.close()
    return body


if __name__ == "__main__":
    main()
