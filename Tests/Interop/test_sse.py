"""Server-Sent Events end to end: POST /v1/streams, GET /v1/streams/{id}/events and DELETE
/v1/streams/{id} against a live `sluice serve` on its built-in simulator, with real clients: curl -N
and httpx2's EventSource, over HTTP/2 (h2c, prior knowledge) and HTTP/1.1 on the same port.

Every event's `data` is validated against schema/stream_event.schema.json, and its `id` and
`event` fields must be its seq and type; responses and errors against schema/stream_created and
schema/http_error. Asynchronous clean-up is awaited by polling /metrics with a deadline.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from dataclasses import dataclass, field

import grpc
import httpx2
import pytest
from hyperframe.frame import SettingsFrame, WindowUpdateFrame

from sluice_testlib import IO_TIMEOUT, FrameClient, StreamResult
from streaming_testlib import (
    CHANNEL_OPTIONS,
    RESUME,
    assert_stream_shape,
    message_text,
    scrape,
    send_request,
    slow_request,
    to_json,
    validate_event,
    validator,
    wait_for_metrics,
    wait_idle,
)

STREAMS = "/v1/streams"
CREATED_VALIDATOR = validator("stream_created.schema.json")
ERROR_VALIDATOR = validator("http_error.schema.json")
CANCEL_VALIDATOR = validator("cancel_request.schema.json")
# A whole curl run: the slowest streams here take a few seconds.
CURL_TIMEOUT = 30.0
# Protocol name (test id) → curl flag and the status line's version.
PROTOCOLS = {"h2c": ("--http2-prior-knowledge", "HTTP/2"), "http1.1": ("--http1.1", "HTTP/1.1")}


# MARK: Parsing text/event-stream


@dataclass
class SSEStream:
    """What a text/event-stream body held: events (id, event, data) and comment lines."""

    events: list[dict] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    @property
    def frames(self) -> list[dict]:
        """Each event's data as a stream event, checked against the schema and its id and event fields."""
        return [check_event(e["id"], e["event"], e["data"]) for e in self.events]


def parse_sse(body: str) -> SSEStream:
    """The WHATWG event-stream format: lines end in CRLF, LF or CR; `:` starts a comment; a blank
    line dispatches the event gathered so far. A trailing partial event is not dispatched."""
    stream = SSEStream()
    current: dict = {}
    for line in re.split(r"\r\n|\r|\n", body):
        if not line:
            if "data" in current:
                stream.events.append({"id": current.get("id"), "event": current.get("event"), "data": current["data"]})
            current = {}
            continue
        if line.startswith(":"):
            stream.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            current["data"] = current["data"] + "\n" + value if "data" in current else value
        elif name in ("id", "event"):
            current[name] = value
    return stream


def check_event(event_id: str | None, event_type: str | None, data: str) -> dict:
    """One SSE event: its data is one stream event, `id` its seq and `event` its type."""
    event = validate_event(json.loads(data))
    assert event_id == str(event["seq"]), f"id {event_id!r} is not seq {event['seq']}"
    assert event_type == event["type"], f"event {event_type!r} is not type {event['type']!r}"
    return event


def check_error(response: httpx2.Response, status: int, code: str) -> str:
    """A JSON error response with this HTTP status and gRPC status name; returns its message."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    errors = list(ERROR_VALIDATOR.iter_errors(body))
    assert not errors, f"error body violates http_error.schema.json: {body}: {[e.message for e in errors]}"
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


# MARK: curl


def curl(port: int, path: str, *args: str, protocol: str = "h2c") -> tuple[int, dict[str, str], str]:
    """curl, unbuffered, until the response ends: (status, headers, body)."""
    flag, version = PROTOCOLS[protocol]
    result = subprocess.run(
        ["curl", flag, "-N", "-sS", "-i", *args, f"http://127.0.0.1:{port}{path}"],
        capture_output=True, timeout=CURL_TIMEOUT, check=False,
    )
    assert result.returncode == 0, f"curl {path} failed ({result.returncode}): {result.stderr.decode()}"
    head, _, body = result.stdout.decode().partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    assert status_line.startswith(version + " "), f"not an {version} response: {status_line!r}"
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def curl_post(port: int, request: dict, token: str | None = None, protocol: str = "h2c") -> str:
    """POST /v1/streams with curl; returns the new stream's id."""
    auth = ["-H", f"authorization: Bearer {token}"] if token else []
    status, headers, body = curl(port, STREAMS, "-X", "POST", "-H", "content-type: application/json",
                                 "--data-binary", json.dumps(request), *auth, protocol=protocol)
    assert status == 201, (status, body)
    assert headers["content-type"] == "application/json"
    created = json.loads(body)
    assert not list(CREATED_VALIDATOR.iter_errors(created)), created
    assert headers["location"] == f"{STREAMS}/{created['stream_id']}/events"
    return created["stream_id"]


def curl_events(port: int, stream_id: str, *args: str, protocol: str = "h2c") -> SSEStream:
    """GET the stream's events with `curl -N` until the response ends."""
    status, headers, body = curl(port, f"{STREAMS}/{stream_id}/events", *args, protocol=protocol)
    assert status == 200, (status, body)
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    return parse_sse(body)


# MARK: httpx2


def http_client(token: str | None = None, protocol: str = "h2c") -> httpx2.Client:
    """httpx2 speaking HTTP/2 with prior knowledge (h2c), or HTTP/1.1."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx2.Client(http1=protocol == "http1.1", http2=protocol == "h2c", headers=headers, timeout=IO_TIMEOUT)


def url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


def post_stream(client: httpx2.Client, port: int, request: dict) -> str:
    response = client.post(url(port, STREAMS), json=request)
    assert response.status_code == 201, (response.status_code, response.text)
    created = response.json()
    assert not list(CREATED_VALIDATOR.iter_errors(created)), created
    return created["stream_id"]


def read_events(client: httpx2.Client, port: int, stream_id: str, limit: int | None = None,
                headers: dict | None = None, params: dict | None = None) -> list[dict]:
    """The stream's events through httpx2's EventSource, all of them or the first `limit` (the
    response is then closed mid-stream: a disconnect)."""
    events = []
    with client.sse(url(port, f"{STREAMS}/{stream_id}/events"), headers=headers, params=params) as source:
        assert source.response.status_code == 200, source.response.read()
        for sse in source:
            events.append(check_event(sse.id, sse.event, sse.data))
            if limit is not None and len(events) == limit:
                break
    return events


def assert_serving(port: int) -> None:
    """A short stream still runs from POST to stream_complete."""
    with http_client() as client:
        events = read_events(client, port, post_stream(client, port, send_request(seed=99, output_tokens=3)))
    assert_stream_shape(events, "OK")


# MARK: Full streams


def rpc_frames(port: int, stream_id: str) -> list[bytes]:
    """The stream's frames as the Resume RPC sends them (grpcio, raw bytes)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        resume = channel.unary_stream(RESUME, request_serializer=to_json, response_deserializer=bytes)
        return list(resume({"stream_id": stream_id, "after_seq": 0}, timeout=IO_TIMEOUT))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_curl_reads_a_whole_stream_whose_data_are_the_rpc_frames(server, protocol):
    stream_id = curl_post(server.port, send_request(seed=1, output_tokens=40), protocol=protocol)

    stream = curl_events(server.port, stream_id, protocol=protocol)

    events = stream.frames
    assert_stream_shape(events, "OK")  # ids 1..N without gaps, stream_complete last
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "stream_complete"
    assert message_text(events)
    assert [e["data"].encode() for e in stream.events] == rpc_frames(server.port, stream_id)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_event_read_is_timed_once_in_the_delivery_histogram(start_server, protocol):
    server = start_server()
    count = "sluice_event_delivery_latency_seconds_count"
    before = scrape(server.port).counter(count)
    stream_id = curl_post(server.port, send_request(seed=4, output_tokens=20), protocol=protocol)

    stream = curl_events(server.port, stream_id, protocol=protocol)

    assert_stream_shape(stream.frames, "OK")
    # Emitted before anyone read them, timed when each was handed to this reader's connection.
    assert scrape(server.port).counter(count) - before == len(stream.events)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_httpx_event_source_reads_a_whole_stream(server, protocol):
    with http_client(protocol=protocol) as client:
        stream_id = post_stream(client, server.port, send_request(seed=2, output_tokens=40))
        events = read_events(client, server.port, stream_id)
        assert client.get(url(server.port, "/healthz")).http_version == ("HTTP/2" if protocol == "h2c" else "HTTP/1.1")
    assert_stream_shape(events, "OK")
    assert {e["stream_id"] for e in events} == {stream_id}


# MARK: Resuming


def curl_until_killed(port: int, stream_id: str, events: int, protocol: str) -> list[dict]:
    """`curl -N` reading the stream, killed (its connection vanishes) once `events` events arrived."""
    process = subprocess.Popen(
        ["curl", PROTOCOLS[protocol][0], "-N", "-sS", url(port, f"{STREAMS}/{stream_id}/events")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        body = ""
        while len(parse_sse(body).events) < events:
            line = process.stdout.readline()
            assert line, f"curl ended after {body!r}: {process.stderr.read().decode()}"
            body += line.decode()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(IO_TIMEOUT)
        process.stdout.close()
        process.stderr.close()
    return parse_sse(body).frames


def httpx_until_closed(port: int, stream_id: str, events: int, protocol: str) -> list[dict]:
    """httpx2 reading the stream, closing the response once `events` events arrived (RST_STREAM
    over HTTP/2; over HTTP/1.1 the connection closes, since the response is unfinished)."""
    with http_client(protocol=protocol) as client:
        return read_events(client, port, stream_id, limit=events)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("first_reader", [curl_until_killed, httpx_until_closed], ids=["curl-killed", "httpx-closed"])
def test_last_event_id_resumes_after_a_disconnect_with_every_event_once(server, first_reader, protocol):
    request = slow_request(seed=3, seconds=2, output_tokens=20)
    with http_client() as client:
        uninterrupted = read_events(client, server.port, post_stream(client, server.port, send_request(seed=3, output_tokens=20)))
        stream_id = post_stream(client, server.port, request)

    first_part = first_reader(server.port, stream_id, 4, protocol)
    assert [e["seq"] for e in first_part] == [1, 2, 3, 4]
    # The disconnect only detached the stream: it runs on to stream_complete.
    rest = curl_events(server.port, stream_id, "-H", f"Last-Event-ID: {first_part[-1]['seq']}", protocol=protocol).frames

    whole = first_part + rest
    assert_stream_shape(whole, "OK")  # every seq exactly once
    assert message_text(whole) == message_text(uninterrupted)


def test_after_seq_query_and_last_event_id_precedence(server):
    with http_client() as client:
        stream_id = post_stream(client, server.port, send_request(seed=4, output_tokens=20))
        whole = read_events(client, server.port, stream_id)
        last = whole[-1]["seq"]

        assert read_events(client, server.port, stream_id, params={"after_seq": 3}) == whole[3:]
        # An EventSource reconnecting sends Last-Event-ID on the URL it started with: the header wins.
        assert read_events(client, server.port, stream_id, headers={"last-event-id": "5"}, params={"after_seq": 2}) == whole[5:]
        # Nothing after the last event of a finished stream: 204 stops an EventSource from reconnecting.
        response = client.get(url(server.port, f"{STREAMS}/{stream_id}/events"), params={"after_seq": last})
        assert (response.status_code, response.content) == (204, b"")


def test_a_newer_reader_takes_the_stream_over(server):
    with http_client() as client:
        stream_id = post_stream(client, server.port, slow_request(seed=5, seconds=2, output_tokens=20))
        first = subprocess.Popen(
            ["curl", "--http2-prior-knowledge", "-N", "-sS", url(server.port, f"{STREAMS}/{stream_id}/events")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            first_line = first.stdout.readline()
            assert first_line.startswith(b"event: message_start")
            second = read_events(client, server.port, stream_id)
            rest, _ = first.communicate(timeout=CURL_TIMEOUT)
        finally:
            first.kill()
            first.wait(IO_TIMEOUT)
    assert_stream_shape(second, "OK")
    # The first response ended cleanly before the stream did, saying why.
    assert first.returncode == 0
    taken_over = parse_sse((first_line + rest).decode())
    assert "stream_complete" not in [e["event"] for e in taken_over.events]
    assert taken_over.comments == [f"a newer reader of stream {stream_id} took over"]


# MARK: Heartbeats


@pytest.mark.parametrize(("configured_by", "protocol"), [("flag", "h2c"), ("environment", "http1.1")])
def test_heartbeats_keep_a_slow_stream_alive(start_server, monkeypatch, configured_by, protocol):
    if configured_by == "flag":
        server = start_server("--sse-heartbeat", "50ms")
    else:
        monkeypatch.setenv("SLUICE_SSE_HEARTBEAT", "50ms")
        server = start_server()
    # Five tokens 400 ms apart: every gap is eight heartbeat intervals.
    stream_id = curl_post(server.port, slow_request(seed=6, seconds=2, output_tokens=5), protocol=protocol)

    stream = curl_events(server.port, stream_id, protocol=protocol)

    assert stream.comments and set(stream.comments) == {"keepalive"}, stream.comments
    assert_stream_shape(stream.frames, "OK")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_stream_whose_events_keep_coming_gets_no_keepalive(start_server, protocol):
    # A delta every 10 ms for 2.5 s, a heartbeat every second: the events the job writes straight into the response
    # (its reader's task waiting all along) count as activity, so no heartbeat interval passes without one.
    server = start_server("--sse-heartbeat", "1s")
    stream_id = curl_post(server.port, slow_request(seed=7, seconds=2.5, output_tokens=250), protocol=protocol)

    stream = curl_events(server.port, stream_id, protocol=protocol)

    assert stream.comments == [], stream.comments
    assert_stream_shape(stream.frames, "OK")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_event_arriving_as_the_heartbeat_fires_is_not_lost(start_server, protocol):
    # A heartbeat every millisecond beside a delta every 10 ms: many events become ready just as a heartbeat
    # fires, and each must still be written exactly once.
    server = start_server("--sse-heartbeat", "1ms")
    stream_id = curl_post(server.port, slow_request(seed=9, seconds=3, output_tokens=300), protocol=protocol)

    stream = curl_events(server.port, stream_id, protocol=protocol)

    assert stream.comments, "no heartbeat was written"
    assert_stream_shape(stream.frames, "OK")


def test_heartbeat_must_be_positive(sluice_bin):
    result = subprocess.run([sluice_bin, "serve", "--port", "0", "--sse-heartbeat", "0s"],
                            capture_output=True, timeout=IO_TIMEOUT, check=False)
    assert result.returncode != 0
    assert b"--sse-heartbeat must be more than 0" in result.stderr


# MARK: Cancel


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_delete_cancels_the_stream_being_read(server, protocol):
    with http_client(protocol=protocol) as client, http_client(protocol=protocol) as canceller:
        stream_id = post_stream(client, server.port, slow_request(seed=7, seconds=10))
        events = []
        with client.sse(url(server.port, f"{STREAMS}/{stream_id}/events")) as source:
            for sse in source:
                events.append(check_event(sse.id, sse.event, sse.data))
                if len(events) == 2:
                    response = canceller.delete(url(server.port, f"{STREAMS}/{stream_id}"))
                    assert response.status_code == 200, response.text
                    assert response.json() == {"stream_id": stream_id, "cancelled": True}
                    assert not list(CANCEL_VALIDATOR.iter_errors(response.json()))
        # The event stream ended after its stream_error.
    assert_stream_shape(events, "CANCELLED")
    assert f"DELETE {STREAMS}/{stream_id}" in events[-1]["error"], events[-1]
    wait_idle(server.port)
    assert_serving(server.port)


# MARK: Clean-up


def test_a_stream_nobody_reads_is_cancelled_after_the_grace(start_server):
    server = start_server("--abandon-grace", "500ms")
    stream_id = curl_post(server.port, slow_request(seed=8, seconds=20))

    wait_for_metrics(
        server.port,
        lambda m: m.counter("sluice_streams_abandoned_cleaned_total") == 1 and m.value("sluice_streams_active") == 0
        and m.value("sluice_streams_queued") == 0 and m.value("sluice_simulator_active_streams") == 0
        and m.value("sluice_upstream_open_transfers") == 0,
        "one abandoned stream cleaned and every stream gauge 0",
    )
    replay = curl_events(server.port, stream_id).frames
    assert_stream_shape(replay, "CANCELLED")
    assert "abandon grace of" in replay[-1]["error"], replay[-1]


# MARK: Errors


@pytest.fixture
def keyed_server(start_server, monkeypatch):
    """Callers `alpha` and `beta`."""
    monkeypatch.setenv("SLUICE_API_KEYS", "alpha, beta")
    return start_server()


def test_authentication_and_caller_isolation(keyed_server):
    port = keyed_server.port
    request = slow_request(seed=9, seconds=10)
    for token in (None, "gamma"):
        with http_client(token) as stranger:
            message = check_error(stranger.post(url(port, STREAMS), json=request), 401, "UNAUTHENTICATED")
            assert "Bearer" in message or "not valid" in message
            check_error(stranger.get(url(port, f"{STREAMS}/st_0000000000000000/events")), 401, "UNAUTHENTICATED")
            check_error(stranger.delete(url(port, f"{STREAMS}/st_0000000000000000")), 401, "UNAUTHENTICATED")

    with http_client("alpha") as alpha, http_client("beta") as beta:
        stream_id = post_stream(alpha, port, request)
        foreign_read = check_error(beta.get(url(port, f"{STREAMS}/{stream_id}/events")), 404, "NOT_FOUND")
        foreign_cancel = check_error(beta.delete(url(port, f"{STREAMS}/{stream_id}")), 404, "NOT_FOUND")
        unknown = check_error(beta.get(url(port, f"{STREAMS}/st_0000000000000000/events")), 404, "NOT_FOUND")
        # Another caller's stream looks exactly like one that never existed.
        assert foreign_read == foreign_cancel == unknown.replace("st_0000000000000000", stream_id)

        first = read_events(alpha, port, stream_id, limit=1)
        assert first[0]["type"] == "message_start"
        assert alpha.delete(url(port, f"{STREAMS}/{stream_id}")).status_code == 200
        assert_stream_shape(read_events(alpha, port, stream_id), "CANCELLED")


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code", "allow"),
    [
        ("POST", STREAMS, {"content": b"{", "headers": {"content-type": "application/json"}}, 400, "INVALID_ARGUMENT", None),
        ("POST", STREAMS, {"json": {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}}, 400, "INVALID_ARGUMENT", None),
        ("POST", STREAMS, {"content": json.dumps(send_request()), "headers": {"content-type": "text/plain"}}, 415, "INVALID_ARGUMENT", None),
        ("GET", STREAMS, {}, 405, "UNIMPLEMENTED", "POST"),
        ("GET", f"{STREAMS}/st_0000000000000000/events", {}, 404, "NOT_FOUND", None),
        ("DELETE", f"{STREAMS}/st_0000000000000000", {}, 404, "NOT_FOUND", None),
        ("POST", f"{STREAMS}/st_0000000000000000/events", {}, 405, "UNIMPLEMENTED", "GET"),
        ("GET", f"{STREAMS}/st_0000000000000000", {}, 405, "UNIMPLEMENTED", "DELETE"),
        ("GET", f"{STREAMS}/st_0000000000000000/events/more", {}, 404, "NOT_FOUND", None),
        ("GET", f"{STREAMS}/", {}, 404, "NOT_FOUND", None),
    ],
    ids=["bad-json", "missing-model", "wrong-content-type", "get-collection", "unknown-stream", "delete-unknown",
         "post-events", "get-stream", "unknown-path", "empty-id"],
)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(server, method, path, kwargs, status, code, allow, protocol):
    with http_client(protocol=protocol) as client:
        message = check_error(client.request(method, url(server.port, path), **kwargs), status, code)
        if allow:
            assert client.request(method, url(server.port, path)).headers["allow"] == allow
    if path == STREAMS and status == 400:
        assert "JSON" in message or "'model'" in message, message
    assert_serving(server.port)


@pytest.mark.parametrize(("headers", "params"), [({"last-event-id": "x"}, None), (None, {"after_seq": "-1"})],
                         ids=["last-event-id", "after_seq"])
def test_malformed_resume_point_is_invalid(server, headers, params):
    with http_client() as client:
        stream_id = post_stream(client, server.port, send_request(seed=10, output_tokens=5))
        response = client.get(url(server.port, f"{STREAMS}/{stream_id}/events"), headers=headers, params=params)
        check_error(response, 400, "INVALID_ARGUMENT")
        assert_stream_shape(read_events(client, server.port, stream_id), "OK")


def test_a_full_server_answers_429(start_server):
    server = start_server("--max-active", "1", "--max-queued", "0")
    with http_client() as client:
        running = post_stream(client, server.port, slow_request(seed=11, seconds=10))
        message = check_error(client.post(url(server.port, STREAMS), json=send_request(seed=12)), 429, "RESOURCE_EXHAUSTED")
        assert "at capacity" in message, message
        assert client.delete(url(server.port, f"{STREAMS}/{running}")).status_code == 200
        wait_idle(server.port)
    assert_serving(server.port)


def frame_request(frames: FrameClient, method: str, path: str, body: bytes | None = None) -> int:
    """A plain HTTP request on a FrameClient connection; returns its HTTP/2 stream id."""
    stream_id = frames.next_stream_id
    frames.next_stream_id += 2
    frames.streams[stream_id] = StreamResult(stream_id)
    headers = [(":method", method), (":scheme", "http"), (":path", path), (":authority", frames.authority)]
    if body is not None:
        headers.append(("content-type", "application/json"))
    frames.send_headers(stream_id, headers, end_stream=body is None)
    if body is not None:
        frames.send_data(stream_id, body, end_stream=True)
    return stream_id


def test_a_draining_server_starts_no_stream(start_server):
    server = start_server("--drain-timeout", "2s")
    with FrameClient(server.port) as frames:
        created = frames.wait_closed(frame_request(frames, "POST", STREAMS, to_json(slow_request(seed=13, seconds=3))))
        assert created.headers[":status"] == "201", created.header_blocks
        stream_id = json.loads(bytes(created.data))["stream_id"]
        # An open event stream keeps the connection through the drain.
        reading = frames.streams[frame_request(frames, "GET", f"{STREAMS}/{stream_id}/events")]
        frames.wait_for(lambda: b"message_start" in reading.data)

        server.signal(signal.SIGTERM)
        frames.wait_for(lambda: frames.goaways)  # the shutdown notice; the final GOAWAY follows ~100 ms later
        late = frames.streams[frame_request(frames, "POST", STREAMS, to_json(send_request(seed=13)))]
        frames.wait_for(lambda: late.closed or len(frames.goaways) > 1 and frames.goaways[-1].last_stream_id < late.stream_id)
        if not late.closed:
            pytest.skip("the POST reached the server after its final GOAWAY, so it was never processed (a slow test host)")
    assert late.headers[":status"] == "503", late.header_blocks
    body = json.loads(bytes(late.data))
    assert not list(ERROR_VALIDATOR.iter_errors(body)) and body["error"]["code"] == "UNAVAILABLE", body


def test_events_no_longer_buffered_are_gone(start_server):
    server = start_server("--replay-buffer-bytes", "512")
    with http_client() as client:
        stream_id = post_stream(client, server.port, send_request(seed=14, output_tokens=40))
        wait_for_metrics(server.port, lambda m: m.counter("sluice_streams_completed_total", status="OK") == 1,
                         "the stream completed")
        message = check_error(client.get(url(server.port, f"{STREAMS}/{stream_id}/events")), 410, "DATA_LOSS")
        assert "replay buffer keeps 512 bytes" in message, message
        # The message names the evicted range; the newest events, after it, are still there.
        evicted = int(re.search(r"events 1–(\d+) of", message).group(1))
        tail = read_events(client, server.port, stream_id, headers={"last-event-id": str(evicted)})
        assert tail[0]["seq"] == evicted + 1 and tail[-1]["type"] == "stream_complete", tail


def test_a_reader_that_falls_behind_holds_the_stream_instead_of_losing_events(start_server):
    server = start_server("--replay-buffer-bytes", "4096")
    # A zero window: the handler can write nothing to the socket, only into its stream's queue.
    with http_client() as client:
        # The first second holds only message_start: time for the reader to attach before the deltas flood in.
        stream_id = post_stream(client, server.port, send_request(seed=15, output_tokens=5000, first_token_delay_ms=1000))
    with FrameClient(server.port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}, auto_window_update=False) as frames:
        reading = frames.streams[frame_request(frames, "GET", f"{STREAMS}/{stream_id}/events")]
        frames.wait_for(lambda: reading.header_blocks)
        # The upstream has sent everything, yet the job waits for its attached reader rather than evicting
        # events the reader has not had (a job that ran on would complete here).
        metrics = wait_for_metrics(
            server.port,
            lambda m: m.value("sluice_simulator_requests") == 1 and m.value("sluice_upstream_open_transfers") == 0,
            "the upstream transfer finished")
        assert metrics.counter("sluice_streams_completed_total", status="OK") == 0, "the job ran ahead of its reader"
        frames.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 30}),
                    WindowUpdateFrame(0, window_increment=1 << 30))
        frames.wait_closed(reading.stream_id)
    assert reading.reset_code is None, f"the response was reset ({reading.reset_code})"
    received = parse_sse(bytes(reading.data).decode()).frames
    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))
    assert received[-1]["type"] == "stream_complete"
