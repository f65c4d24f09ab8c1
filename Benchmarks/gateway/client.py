"""The gateway benchmark's load generator: streamed answers over HTTP/1.1, one connection per stream.

It speaks the one protocol all three gateways (and the simulator) serve, so the same client drives every row:
- `anthropic`: POST /v1/messages with "stream": true (nghttpx, LiteLLM, the simulator itself), the scenario in
  the `sluice-simulation` header;
- `sluice-sse`: POST /v1/streams (the SendMessage request, scenario in its "simulation" field), then
  GET /v1/streams/{id}/events on the same connection.

The simulator stamps each text delta with its send time (`@T<unix-ns>;`, scenario "stamp_deltas"); this client
subtracts it from the receive time (both CLOCK_REALTIME on this machine): end-to-end delta latency. Time to first
token = request written (connection already open) → first stamped delta read. Streams start while fewer than
--concurrency are in flight, at most --rate per second, until --streams have started.
Prints one JSON object: counts and percentiles (ms).
"""

import argparse
import asyncio
import json
import re
import resource
import ssl
import sys
import time

STAMP = re.compile(rb"@T(\d+);")
# The key run.sh gives LiteLLM as its master key (LiteLLM refuses to start without one); the others ignore it.
API_KEY = "sk-benchmark-3f9c2a7e5b1d4c8a9e6f0b2d7c4a1e5f"


def percentiles(values):
    if not values:
        return {"count": 0}
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]
    return {"count": len(values), "p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "p99_9": pick(0.999),
            "max": values[-1]}


class Body:
    """Reads one HTTP/1.1 response body incrementally (Content-Length, chunked, or until close)."""

    def __init__(self, reader, headers):
        self.reader = reader
        self.chunked = "chunked" in headers.get("transfer-encoding", "")
        self.remaining = int(headers["content-length"]) if "content-length" in headers else None
        self.done = False

    async def next(self):
        """The next piece of the body, or None at its end."""
        if self.done:
            return None
        if self.chunked:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await self.reader.readline()) not in (b"\r\n", b""):
                    pass
                self.done = True
                return None
            data = await self.reader.readexactly(size + 2)
            return data[:-2]
        if self.remaining is not None:
            if self.remaining == 0:
                self.done = True
                return None
            data = await self.reader.read(min(self.remaining, 65536))
            if not data:
                raise ConnectionError(f"body ended {self.remaining} bytes early")
            self.remaining -= len(data)
            return data
        data = await self.reader.read(65536)
        if not data:
            self.done = True
            return None
        return data


async def read_head(reader):
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def request_bytes(method, path, host, headers, body=b""):
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}"] + [f"{k}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Run:
    def __init__(self, args):
        self.args = args
        self.ttft, self.e2e = [], []
        self.ok = self.failed = self.deltas = 0
        self.errors = {}
        self.tls = None
        if args.url.startswith("https://"):
            self.tls = ssl.create_default_context(cafile=args.ca)
            self.tls.set_alpn_protocols(["http/1.1"])
        hostport = args.url.split("://", 1)[1].rstrip("/")
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        self.hostport = hostport
        self.simulation = json.loads(args.simulation)
        self.message = {"model": args.model, "max_tokens": args.max_tokens,
                        "messages": [{"role": "user", "content": args.prompt}]}

    async def stream(self):
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.tls)
        try:
            if self.args.mode == "anthropic":
                body = json.dumps({**self.message, "stream": True}).encode()
                headers = {"content-type": "application/json", "anthropic-version": "2023-06-01",
                           "x-api-key": API_KEY, "authorization": f"Bearer {API_KEY}", "sluice-simulation": json.dumps(self.simulation),
                           "connection": "close"}
                started = time.time_ns()
                writer.write(request_bytes("POST", "/v1/messages", self.hostport, headers, body))
            else:
                body = json.dumps({**self.message, "simulation": self.simulation}).encode()
                started = time.time_ns()
                writer.write(request_bytes("POST", "/v1/streams", self.hostport, {"content-type": "application/json"}, body))
                status, headers = await read_head(reader)
                created = Body(reader, headers)
                text = b""
                while (piece := await created.next()) is not None:
                    text += piece
                if status != 201:
                    raise ConnectionError(f"POST /v1/streams: {status} {text[:200]!r}")
                stream_id = json.loads(text)["stream_id"]
                writer.write(request_bytes("GET", f"/v1/streams/{stream_id}/events", self.hostport,
                                           {"accept": "text/event-stream", "connection": "close"}))
            status, headers = await read_head(reader)
            body = Body(reader, headers)
            if status != 200:
                text = b""
                while (piece := await body.next()) is not None:
                    text += piece
                raise ConnectionError(f"HTTP {status}: {text[:200]!r}")
            first = True
            tail = b""  # the end of the previous piece, where a stamp may have been cut in two
            while (piece := await body.next()) is not None:
                now = time.time_ns()
                data = tail + piece
                last_end = 0
                for match in STAMP.finditer(data):
                    self.deltas += 1
                    self.e2e.append((now - int(match.group(1))) / 1e6)
                    if first:
                        self.ttft.append((now - started) / 1e6)
                        first = False
                    last_end = match.end()
                # A stamp is 22 bytes; none is complete in what is kept, so none is counted twice.
                tail = data[max(last_end, len(data) - 32):]
            if first:
                raise ConnectionError("the answer had no stamped text delta")
            self.ok += 1
        except Exception as error:  # counted and reported; the run goes on
            self.failed += 1
            key = f"{type(error).__name__}: {error}"[:160]
            self.errors[key] = self.errors.get(key, 0) + 1
        finally:
            writer.close()

    async def run(self):
        semaphore = asyncio.Semaphore(self.args.concurrency)
        interval = 1 / self.args.rate if self.args.rate else 0
        tasks = []
        began = time.monotonic()
        for index in range(self.args.streams):
            await semaphore.acquire()
            if interval:
                delay = began + index * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            task = asyncio.create_task(self.stream())
            task.add_done_callback(lambda _: semaphore.release())
            tasks.append(task)
        await asyncio.gather(*tasks)
        wall = time.monotonic() - began
        return {"mode": self.args.mode, "url": self.args.url, "streams": {"ok": self.ok, "failed": self.failed},
                "errors": self.errors, "deltas": self.deltas, "wall_seconds": wall,
                "latency_ms": {"time_to_first_token": percentiles(self.ttft), "end_to_end": percentiles(self.e2e)}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="http://host:port, or https:// (then --ca)")
    parser.add_argument("--ca", help="CA certificate for https")
    parser.add_argument("--mode", choices=["anthropic", "sluice-sse"], required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--rate", type=float, help="stream starts per second (default: as fast as concurrency allows)")
    parser.add_argument("--simulation", required=True, help="the simulator scenario (JSON)")
    parser.add_argument("--model", default="claude-sonnet-4-5")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--prompt", default="Tell me about rivers.")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(Run(args).run())
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
