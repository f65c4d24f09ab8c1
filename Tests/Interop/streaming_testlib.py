"""Helpers for test_streaming.py: grpcio callers for StreamingService (JSON codec), stream-event
validation (JSON Schema Draft 2020-12 with every file in schema/ in one `referencing` registry, plus
the stream shape: seq 1..n, first and last event, status), raw-frame helpers, and /metrics scraping.

Every event a helper reads is validated against schema/stream_event.schema.json as it is read.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import grpc
import h2.config
import h2.connection
import h2.events
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from sluice_testlib import IO_TIMEOUT, REPO_ROOT, FrameClient, json_envelope

SEND_MESSAGE = "/sluice.v1.StreamingService/SendMessage"
RESUME = "/sluice.v1.StreamingService/Resume"
CANCEL_METHOD = "/sluice.v1.StreamingService/Cancel"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
MODEL = "claude-sonnet-4-5"
TERMINAL_TYPES = {"stream_complete", "stream_error"}


# MARK: Schemas


SCHEMA_DIR = REPO_ROOT / "schema"


def load_schema_registry() -> Registry:
    """Every schema/*.json as a Draft 2020-12 resource under its `$id` (each schema checked first)."""
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        contents = json.loads(path.read_text())
        Draft202012Validator.check_schema(contents)
        resources.append((contents["$id"], Resource.from_contents(contents, default_specification=DRAFT202012)))
    return Registry().with_resources(resources)


REGISTRY = load_schema_registry()


def schema_id(file_name: str) -> str:
    return json.loads((SCHEMA_DIR / file_name).read_text())["$id"]


def validator(file_name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": schema_id(file_name)}, registry=REGISTRY)


EVENT_VALIDATOR = validator("stream_event.schema.json")
REQUEST_VALIDATOR = validator("send_message_request.schema.json")


def validate_event(event) -> dict:
    """Fails with every schema violation of one stream event."""
    errors = sorted(EVENT_VALIDATOR.iter_errors(event), key=lambda e: list(e.path))
    assert not errors, f"event violates stream_event.schema.json: {event}\n" + "\n".join(
        f"  {list(e.path)}: {e.message}" for e in errors)
    return event


# MARK: Requests


def send_request(seed: int = 0, output_tokens: int = 24, *, prompt: str = "hello", **simulation) -> dict:
    """A SendMessage request with a simulator scenario (`simulation` fields as keyword arguments)."""
    return {
        "model": MODEL,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": prompt}],
        "simulation": {"seed": seed, "output_tokens": output_tokens, **simulation},
    }


def slow_request(seed: int = 0, seconds: float = 2.0, output_tokens: int = 20, **simulation) -> dict:
    """A request whose stream takes about `seconds` (the simulator paces tokens evenly)."""
    interval = seconds * 1000 / output_tokens
    return send_request(seed, output_tokens, token_interval_ms=interval, **simulation)


def to_json(message) -> bytes:
    return json.dumps(message).encode()


def bearer(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token is not None else []


# MARK: Stream shape


class StreamShapeError(AssertionError):
    """A stream broke the documented event order (seq, first or last event, status)."""


def assert_stream_shape(events: list[dict], code: str, after_seq: int = 0) -> None:
    """The README's contract for one call's events: seq after_seq+1, +2, … without gaps, one stream
    id, the first event of a whole stream stream_queued or message_start (or a lone stream_error),
    and the last stream_complete for OK or stream_error whose details.code is the call's status.
    A call without events must have failed before admission."""

    def fail(problem: str):
        summary = [(e.get("seq"), e.get("type")) for e in events]
        raise StreamShapeError(f"{problem} (status {code}; events {summary})")

    if not events:
        if code == "OK":
            fail("an OK call without events")
        return
    if len({e["stream_id"] for e in events}) != 1:
        fail("events of several streams in one call")
    seqs = [e["seq"] for e in events]
    if seqs != list(range(after_seq + 1, after_seq + 1 + len(events))):
        fail(f"seq is not {after_seq + 1}..{after_seq + len(events)} without gaps")
    if after_seq == 0:
        first = events[0]["type"]
        if first not in ("stream_queued", "message_start") and not (first == "stream_error" and len(events) == 1):
            fail(f"the first event is {first}, not stream_queued or message_start")
    for event in events[:-1]:
        if event["type"] in TERMINAL_TYPES:
            fail(f"{event['type']} at seq {event['seq']} is not the last event")
    last = events[-1]
    if code == "OK":
        if last["type"] != "stream_complete":
            fail(f"an OK call ends with {last['type']}, not stream_complete")
    else:
        if last["type"] != "stream_error":
            fail(f"a {code} call ends with {last['type']}, not stream_error")
        if last.get("details", {}).get("code") != code:
            fail(f"stream_error details.code {last.get('details', {}).get('code')!r} is not the call's status {code}")


def message_text(events: list[dict]) -> str:
    """The text a client keeps: every message_delta, minus partial text dropped by message_restart."""
    text = ""
    for event in events:
        if event["type"] == "message_delta":
            text += event["delta"]
        elif event["type"] == "message_restart":
            text = ""
    return text


@dataclass
class StreamOutcome:
    """One call's validated events and final status (`code` is the gRPC status name, e.g. "OK")."""

    events: list[dict]
    code: str
    details: str
    elapsed: float  # seconds from the call's start to its end, client side

    @property
    def text(self) -> str:
        return message_text(self.events)

    @property
    def stream_id(self) -> str:
        assert self.events, f"the call ({self.code}: {self.details}) had no events"
        return self.events[0]["stream_id"]

    @property
    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    def assert_shape(self, after_seq: int = 0) -> None:
        assert_stream_shape(self.events, self.code, after_seq)


# MARK: grpcio


class StreamReader:
    """Reads a grpcio server-streaming call, validating each event as it arrives."""

    def __init__(self, call, after_seq: int = 0):
        self.call = call
        self.after_seq = after_seq
        self.events: list[dict] = []
        self.started = time.monotonic()
        self.code: str | None = None
        self.details = ""
        self.elapsed = 0.0

    def take(self, count: int) -> list[dict]:
        """The next `count` events (fails if the call ends first)."""
        taken = []
        for _ in range(count):
            try:
                event = validate_event(next(self.call))
            except StopIteration:
                raise AssertionError(f"the call ended after {len(self.events)} events; wanted {count} more") from None
            self.events.append(event)
            taken.append(event)
        return taken

    def finish(self, shape: bool = True) -> StreamOutcome:
        """Reads to the end. With `shape`, checks the stream's shape (see `assert_stream_shape`)."""
        try:
            for event in self.call:
                self.events.append(validate_event(event))
            self.code, self.details = "OK", ""
        except grpc.RpcError as error:
            self.code, self.details = error.code().name, error.details() or ""
        self.elapsed = time.monotonic() - self.started
        outcome = StreamOutcome(self.events, self.code, self.details, self.elapsed)
        if shape:
            outcome.assert_shape(self.after_seq)
        return outcome


class SluiceClient:
    """grpcio with JSON (de)serializers for SendMessage, Resume, Cancel and Health/Check."""

    def __init__(self, port: int, token: str | None = None):
        self.port = port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
        self.metadata = tuple(bearer(token))
        stream = dict(request_serializer=to_json, response_deserializer=json.loads)
        self._send = self.channel.unary_stream(SEND_MESSAGE, **stream)
        self._resume = self.channel.unary_stream(RESUME, **stream)
        self._cancel = self.channel.unary_unary(CANCEL_METHOD, **stream)
        self._health = self.channel.unary_unary(HEALTH_CHECK, **stream)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self, request: dict, timeout: float | None = None) -> StreamReader:
        return StreamReader(self._send(request, timeout=timeout, metadata=self.metadata))

    def send_message(self, request: dict, timeout: float | None = None, shape: bool = True) -> StreamOutcome:
        return self.start(request, timeout).finish(shape)

    def start_resume(self, stream_id: str, after_seq: int = 0) -> StreamReader:
        call = self._resume({"stream_id": stream_id, "after_seq": after_seq}, metadata=self.metadata)
        return StreamReader(call, after_seq)

    def resume(self, stream_id: str, after_seq: int = 0, shape: bool = True) -> StreamOutcome:
        return self.start_resume(stream_id, after_seq).finish(shape)

    def cancel(self, stream_id: str) -> dict:
        """Cancel's response; raises grpc.RpcError on a non-OK status."""
        return self._cancel({"stream_id": stream_id}, metadata=self.metadata, timeout=IO_TIMEOUT)

    def health(self, service: str = "") -> dict:
        return self._health({"service": service}, metadata=self.metadata, timeout=IO_TIMEOUT)


def rpc_error(function, *args, **kwargs) -> grpc.RpcError:
    """The grpc.RpcError a unary call raises (fails if it succeeds)."""
    try:
        response = function(*args, **kwargs)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"expected an error, got {response!r}")


def reference_text(client: SluiceClient, seed: int, output_tokens: int, prompt: str = "hello") -> str:
    """The simulator's text for this seed, length and prompt, from an unpaced fault-free stream."""
    outcome = client.send_message(send_request(seed, output_tokens, prompt=prompt))
    assert outcome.code == "OK", outcome
    assert outcome.text, "the reference stream has no text"
    return outcome.text


# MARK: Raw frames


def complete_messages(data: bytes) -> list[dict]:
    """The JSON messages of the complete envelopes at the start of `data` (a partial one is left)."""
    out, offset = [], 0
    while len(data) - offset >= 5:
        _, length = struct.unpack_from(">BI", data, offset)
        if len(data) - offset - 5 < length:
            break
        out.append(json.loads(data[offset + 5 : offset + 5 + length]))
        offset += 5 + length
    return out


def frame_send_message(client: FrameClient, request: dict, token: str | None = None,
                       extra: list[tuple[str, str]] = ()) -> int:
    """Starts SendMessage on a FrameClient; returns the HTTP/2 stream id."""
    return client.start(SEND_MESSAGE, json_envelope(request), content_type="application/grpc+json",
                        headers=[*bearer(token), *extra])


def frame_read_events(client: FrameClient, h2_stream: int, count: int) -> list[dict]:
    """Processes frames until `count` events of `h2_stream` arrived; returns them all, validated."""
    stream = client.streams[h2_stream]
    client.wait_for(lambda: len(complete_messages(bytes(stream.data))) >= count or stream.closed)
    events = [validate_event(e) for e in complete_messages(bytes(stream.data))]
    assert len(events) >= count, f"the stream closed after {len(events)} events: {stream.header_blocks}"
    return events


def drop_connection(client: FrameClient) -> None:
    """Closes the TCP connection without RST_STREAM or GOAWAY (a client that vanished)."""
    client.sock.shutdown(socket.SHUT_RDWR)
    client.sock.close()


# MARK: Plain HTTP/2 GET (h2) and /metrics


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET over h2c with `h2`: (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, [(":method", "GET"), (":scheme", "http"), (":path", path),
                                      (":authority", f"127.0.0.1:{port}")], end_stream=True)
        sock.sendall(conn.data_to_send())
        status, body, ended = None, bytearray(), False
        while not ended:
            data = sock.recv(65536)
            assert data, f"connection closed before the response to GET {path} ended"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                    status = int(dict(event.headers)[":status"])
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    ended = True
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                    raise AssertionError(f"GET {path} was reset ({event.error_code})")
            sock.sendall(conn.data_to_send())
        return status, body.decode()


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Metrics:
    """One /metrics scrape: {name: {frozenset(labels): value}}."""

    samples: dict[str, dict[frozenset, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "Metrics":
        metrics = cls()
        for line in text.splitlines():
            match = SAMPLE.match(line)
            if match and not line.startswith("#"):
                labels = frozenset(LABEL.findall(match.group(2) or ""))
                metrics.samples.setdefault(match.group(1), {})[labels] = float(match.group(3))
        return metrics

    def value(self, name: str, default: float | None = None, **labels: str) -> float:
        """The sum of `name`'s series having `labels`; `default` when there is none (else KeyError)."""
        wanted = set(labels.items())
        matching = [v for k, v in self.samples.get(name, {}).items() if wanted <= k]
        if not matching:
            if default is None:
                raise KeyError(f"no sample {name}{labels or ''} in /metrics; names: {sorted(self.samples)}")
            return default
        return sum(matching)

    def counter(self, name: str, **labels: str) -> float:
        """A counter, 0 before its first increment (swift-metrics creates it lazily)."""
        return self.value(name, 0.0, **labels)


def scrape(port: int) -> Metrics:
    status, body = http_get(port, "/metrics")
    assert status == 200, f"/metrics answered {status}"
    return Metrics.parse(body)


def wait_for_metrics(port: int, condition, description: str, timeout: float = IO_TIMEOUT) -> Metrics:
    """Scrapes /metrics until `condition(metrics)` holds; fails after `timeout` with the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(port)
        if condition(metrics):
            return metrics
        if time.monotonic() >= deadline:
            interesting = {n: s for n, s in metrics.samples.items() if n.startswith("sluice_")}
            raise AssertionError(f"within {timeout:.1f}s, /metrics never showed {description}; last: {interesting}")
        time.sleep(0.02)  # poll interval, not synchronisation


IDLE_GAUGES = ("sluice_streams_active", "sluice_streams_queued", "sluice_simulator_active_streams",
               "sluice_upstream_open_transfers")


def wait_idle(port: int, timeout: float = IO_TIMEOUT) -> Metrics:
    """Waits until no stream runs or waits and no upstream transfer is open."""
    return wait_for_metrics(port, lambda m: all(m.value(g) == 0 for g in IDLE_GAUGES),
                            " and ".join(f"{g} 0" for g in IDLE_GAUGES), timeout)


class MetricsSampler:
    """Scrapes /metrics in a thread until stopped, keeping each gauge's maximum."""

    def __init__(self, port: int, names: tuple[str, ...]):
        self.port = port
        self.maxima = dict.fromkeys(names, 0.0)
        self.scrapes = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(IO_TIMEOUT)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                metrics = scrape(self.port)
                self.scrapes += 1
                for name in self.maxima:
                    self.maxima[name] = max(self.maxima[name], metrics.value(name))
                self._stop.wait(0.01)
        except BaseException as error:  # reported by the test
            self.error = error
