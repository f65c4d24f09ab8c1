"""Remote-reader lag probe for Benchmarks/store/run.sh (standard library only).

Starts STREAMS SSE streams on the owner replica (POST /v1/streams, simulator scenario with stamped deltas), reads
each on the owner (its attached client, served from memory) and, given --remote, on another replica as well
(GET …/events?after_seq=0: replayed from the Redis log, then followed live through the owner's notifications).
Each reader is a thread with its own HTTP/1.1 connection; an event's receipt time is taken when its blank line
arrives. Writes JSON: per stream, the receipt time of each seq on each side (monotonic ns), the remote reader's
first receipt, and each text delta's stamp (the simulator's send time, CLOCK_REALTIME ns) with the receipt
time on the same clock.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import threading
import time

STAMP = re.compile(rb'@T(\d+);')


def read_stream(port: int, path: str, out: dict) -> None:
    """Reads one SSE stream to its end: out["seqs"][seq] = monotonic ns, out["stamps"][seq] = (stamp, realtime)."""
    for attempt in range(200):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        connection.request("GET", path, headers={"accept": "text/event-stream"})
        response = connection.getresponse()
        if response.status == 404 and attempt < 199:
            # The owner's first writes may not have reached Redis yet.
            response.read()
            connection.close()
            time.sleep(0.01)
            continue
        break
    out["status"] = response.status
    seq, data = None, b""
    while True:
        line = response.readline()
        if not line:
            break
        line = line.rstrip(b"\r\n")
        if line.startswith(b"id:"):
            seq = int(line[3:].strip())
        elif line.startswith(b"data:"):
            data = line[5:]
        elif line == b"" and seq is not None:
            now, wall = time.monotonic_ns(), time.time_ns()
            out["seqs"][seq] = now
            out.setdefault("first", now)
            stamp = STAMP.search(data)
            if stamp:
                out["stamps"][seq] = (int(stamp.group(1)), wall)
            seq, data = None, b""
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--owner", type=int, required=True)
    parser.add_argument("--remote", type=int)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--interval-ms", type=int, default=200)
    parser.add_argument("--delay", type=float, default=3.0, help="seconds before starting (the load ramps up)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    time.sleep(args.delay)
    results, threads = [], []
    for index in range(args.streams):
        body = json.dumps({
            "model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": [{"role": "user", "content": "hello"}],
            "simulation": {"seed": index, "output_tokens": args.tokens, "token_interval_ms": args.interval_ms,
                           "stamp_deltas": True},
        })
        connection = http.client.HTTPConnection("127.0.0.1", args.owner, timeout=30)
        connection.request("POST", "/v1/streams", body=body, headers={"content-type": "application/json"})
        response = connection.getresponse()
        created = json.loads(response.read())
        connection.close()
        assert response.status == 201, created
        stream_id = created["stream_id"]
        entry = {"stream_id": stream_id, "owner": {"seqs": {}, "stamps": {}}}
        sides = [("owner", args.owner, f"/v1/streams/{stream_id}/events")]
        if args.remote:
            entry["remote"] = {"seqs": {}, "stamps": {}}
            sides.append(("remote", args.remote, f"/v1/streams/{stream_id}/events?after_seq=0"))
        for side, port, path in sides:
            thread = threading.Thread(target=read_stream, args=(port, path, entry[side]), daemon=True)
            thread.start()
            threads.append(thread)
        results.append(entry)
        time.sleep(0.05)  # spread the probe's streams over a few deltas' time
    for thread in threads:
        thread.join(300)
    json.dump(results, open(args.out, "w"))


if __name__ == "__main__":
    main()
