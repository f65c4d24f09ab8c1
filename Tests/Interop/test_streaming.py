"""StreamingService end to end: SendMessage, Resume and Cancel against a live `sluice serve` on its
built-in simulator, with grpcio (JSON codec) and raw HTTP/2 frames.

Every event read goes through streaming_testlib, which validates it against
schema/stream_event.schema.json; whole streams are checked for seq 1..n, first and last event and
status (`assert_stream_shape`). Asynchronous clean-up is awaited by polling /metrics with a deadline.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sluice_testlib import CANCEL, GRPC_RESOURCE_EXHAUSTED, IO_TIMEOUT, FrameClient, H2Session, envelope
from streaming_testlib import (
    HEALTH_CHECK,
    MODEL,
    REQUEST_VALIDATOR,
    MetricsSampler,
    SluiceClient,
    StreamShapeError,
    assert_stream_shape,
    drop_connection,
    frame_read_events,
    frame_send_message,
    http_get,
    message_text,
    reference_text,
    rpc_error,
    scrape,
    send_request,
    slow_request,
    validate_event,
    wait_for_metrics,
    wait_idle,
)

SIMULATOR_ACTIVE = "sluice_simulator_active_streams"
SIMULATOR_ABORTED = "sluice_simulator_aborted_streams"
OPEN_TRANSFERS = "sluice_upstream_open_transfers"
STREAMS_ACTIVE = "sluice_streams_active"
STREAMS_QUEUED = "sluice_streams_queued"

@pytest.fixture
def client(server):
    with SluiceClient(server.port) as client:
        yield client


@pytest.fixture
def simulator_port(sluice_bin, tmp_path):
    """`sluice simulate --port 0`: the same simulator, standalone, to read its text directly."""
    with open(tmp_path / "simulate.stderr", "wb") as stderr:
        proc = subprocess.Popen([sluice_bin, "simulate", "--port", "0"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=stderr)
    try:
        line = proc.stdout.readline().decode()
        match = re.match(r"sluice simulator listening on \S+:(\d+)", line)
        assert match, f"unexpected first line of sluice simulate: {line!r}"
        yield int(match.group(1))
    finally:
        proc.kill()
        proc.wait(IO_TIMEOUT)
        proc.stdout.close()


def simulator_text(port: int, seed: int, output_tokens: int, prompt: str = "hello") -> str:
    """The text of a non-streaming Messages API call to the standalone simulator."""
    body = {"model": MODEL, "max_tokens": 4096, "messages": [{"role": "user", "content": prompt}]}
    scenario = json.dumps({"seed": seed, "output_tokens": output_tokens})
    with H2Session(port) as session:
        response = session.call("/v1/messages", json.dumps(body).encode(), "application/json",
                                [("sluice-simulation", scenario)])
    assert response.headers.get(":status") == "200", (response.headers, bytes(response.data))
    message = json.loads(bytes(response.data))
    return "".join(block["text"] for block in message["content"] if block["type"] == "text")


# MARK: 1. Happy path


def test_send_message_happy_path(client, simulator_port):
    outcome = client.send_message(send_request(seed=7, output_tokens=40))

    assert outcome.code == "OK"
    assert outcome.types[0] == "message_start"
    assert outcome.types[1:-2] == ["message_delta"] * (len(outcome.events) - 3)
    assert outcome.types[-2:] == ["message_stop", "stream_complete"]
    start = outcome.events[0]
    assert start["role"] == "assistant" and start["model"] == MODEL
    assert {e["id"] for e in outcome.events[1:-1]} == {start["id"]}
    assert outcome.events[-2]["stop_reason"] == "end_turn"
    assert outcome.events[-1]["usage"]["output_tokens"] > 0
    # The deltas are exactly what the simulator says for this seed, on every run.
    assert outcome.text == simulator_text(simulator_port, seed=7, output_tokens=40)
    again = client.send_message(send_request(seed=7, output_tokens=40))
    assert again.text == outcome.text
    assert again.stream_id != outcome.stream_id
    assert client.send_message(send_request(seed=8, output_tokens=40)).text != outcome.text


# MARK: 2. Admission bound and queue


def test_admission_bound_runs_4_queues_4_rejects_12(start_server):
    server = start_server("--max-active", "4", "--max-queued", "4")
    gauges = (SIMULATOR_ACTIVE, OPEN_TRANSFERS, STREAMS_ACTIVE, STREAMS_QUEUED)
    with SluiceClient(server.port) as client, MetricsSampler(server.port, gauges) as sampler:
        readers = [client.start(slow_request(seed=i, seconds=2)) for i in range(20)]
        wait_for_metrics(server.port, lambda m: m.counter("sluice_streams_rejected_total") == 12,
                         "12 rejected streams")

        # One more while the server is full: a trailers-only response (one HEADERS frame with
        # END_STREAM and grpc-status, no DATA).
        with FrameClient(server.port) as frames:
            extra = frames.wait_closed(frame_send_message(frames, send_request(seed=99)))
        assert extra.trailers_only, extra.header_blocks
        assert extra.grpc_status == GRPC_RESOURCE_EXHAUSTED
        assert re.search(r"4 streams running \(limit 4\) and 4 queued \(limit 4\)", extra.grpc_message), extra.grpc_message

        with ThreadPoolExecutor(len(readers)) as pool:
            outcomes = list(pool.map(lambda reader: reader.finish(), readers))
    assert sampler.error is None, sampler.error
    assert sampler.scrapes > 0

    rejected = [o for o in outcomes if not o.events]
    running = [o for o in outcomes if o.events and o.types[0] == "message_start"]
    queued = [o for o in outcomes if o.events and o.types[0] == "stream_queued"]
    assert (len(running), len(queued), len(rejected)) == (4, 4, 12)
    for outcome in rejected:
        assert outcome.code == "RESOURCE_EXHAUSTED"
        assert re.search(r"running \(limit 4\).*queued \(limit 4\)", outcome.details), outcome.details
    assert sorted(o.events[0]["position"] for o in queued) == [1, 2, 3, 4]
    for outcome in queued:
        positions = [e["position"] for e in outcome.of_type("stream_queued")]
        assert positions == sorted(positions, reverse=True), f"queue positions went up: {positions}"
    for outcome in running + queued:
        assert outcome.code == "OK"
        assert outcome.types.count("message_start") == 1
    assert sampler.maxima[SIMULATOR_ACTIVE] <= 4, sampler.maxima
    assert sampler.maxima[OPEN_TRANSFERS] <= 4, sampler.maxima
    assert sampler.maxima[STREAMS_ACTIVE] <= 4, sampler.maxima
    assert sampler.maxima[STREAMS_QUEUED] <= 4, sampler.maxima
    wait_idle(server.port)


def test_queue_timeout_ends_queued_stream(start_server):
    server = start_server("--max-active", "1", "--queue-timeout", "300ms")
    with SluiceClient(server.port) as client:
        running = client.start(slow_request(seed=1, seconds=10))
        assert running.take(1)[0]["type"] == "message_start"

        queued = client.send_message(send_request(seed=2))

        running.call.cancel()
    assert queued.code == "RESOURCE_EXHAUSTED"
    assert queued.types == ["stream_queued", "stream_error"]
    assert queued.events[0]["position"] == 1
    assert "queue timeout of" in queued.details and "queue" in queued.events[-1]["error"], queued.details
    wait_idle(server.port)


# MARK: 3. Deadline


def test_grpcio_deadline_ends_call_and_aborts_upstream(client, server):
    aborted_before = scrape(server.port).value(SIMULATOR_ABORTED)

    outcome = client.send_message(slow_request(seed=3, seconds=5), timeout=0.5, shape=False)

    assert outcome.code == "DEADLINE_EXCEEDED"
    assert abs(outcome.elapsed - 0.5) <= 0.1, f"the call ended {outcome.elapsed:.3f}s after it started"
    # grpcio enforces the deadline itself, so events in flight at that instant (the final
    # stream_error among them) may never be read: only the events before it are checked.
    assert outcome.types[0] == "message_start"
    assert [e["seq"] for e in outcome.events] == list(range(1, len(outcome.events) + 1))
    wait_for_metrics(
        server.port,
        lambda m: m.value(SIMULATOR_ACTIVE) == 0 and m.value(SIMULATOR_ABORTED) > aborted_before
        and m.value(STREAMS_ACTIVE) == 0,
        f"{SIMULATOR_ACTIVE} 0, {SIMULATOR_ABORTED} above {aborted_before} and {STREAMS_ACTIVE} 0",
    )


def test_server_ends_call_at_grpc_timeout(server):
    """Without a client-side timer (raw frames), the server itself ends the call at its grpc-timeout.
    (Whether the last event is stream_error: test_deadline_streams_end_with_stream_error.)"""
    with FrameClient(server.port) as frames:
        started = time.monotonic()
        h2_stream = frame_send_message(frames, slow_request(seed=4, seconds=5), extra=[("grpc-timeout", "500m")])
        result = frames.wait_closed(h2_stream)
        elapsed = time.monotonic() - started
    events = [validate_event(e) for e in result.messages]
    assert result.grpc_status == 4, (result.header_blocks, result.grpc_message)
    assert "grpc-timeout" in result.grpc_message
    assert abs(elapsed - 0.5) <= 0.1, f"the call ended {elapsed:.3f}s after it started"
    assert events[0]["type"] == "message_start"
    wait_idle(server.port)


def test_deadline_streams_end_with_stream_error(server):
    with FrameClient(server.port) as frames:
        h2_streams = [frame_send_message(frames, slow_request(seed=seed, seconds=5), extra=[("grpc-timeout", "500m")])
                      for seed in range(20)]
        results = [frames.wait_closed(h2_stream) for h2_stream in h2_streams]
    assert [r.grpc_status for r in results] == [4] * 20
    wait_idle(server.port)
    for result in results:
        assert_stream_shape([validate_event(e) for e in result.messages], "DEADLINE_EXCEEDED")


# MARK: 4. Upstream faults and retries


STALL_FLAGS = ("--upstream-idle-timeout", "300ms", "--first-token-timeout", "300ms")


def fault_flags(kind: str) -> tuple[str, ...]:
    # A stall before any model output (after_events 0) is caught by the first-token timeout, later by the idle one.
    return STALL_FLAGS if kind == "stall" else ()


def check_invisible_retry(server, client, outcome, seed: int, output_tokens: int) -> list[dict]:
    """The stream succeeded with exactly the fault-free text, one message_start, some retries."""
    assert outcome.code == "OK", outcome.details
    assert outcome.text == reference_text(client, seed, output_tokens)
    assert outcome.types.count("message_start") == 1
    assert outcome.types.count("message_stop") == 1
    assert "message_restart" not in outcome.types
    retries = outcome.of_type("upstream_retry")
    assert retries, f"no upstream_retry event: {outcome.types}"
    assert [r["attempt"] for r in retries] == list(range(1, len(retries) + 1))
    assert scrape(server.port).counter("sluice_upstream_retries_total") >= len(retries)
    return retries



@pytest.mark.parametrize("kind, after_events", [
    pytest.param(kind, after, id=f"{kind}-after{after}")
    for kind in ("drop", "error_event", "stall") for after in (0, 3, 10)
])
def test_fault_once_is_invisible_in_text(start_server, kind, after_events):
    server = start_server(*fault_flags(kind))
    seed, tokens = 100 + after_events, 40
    with SluiceClient(server.port) as client:
        fault = {"kind": kind, "after_events": after_events, "times": 1}
        outcome = client.send_message(send_request(seed, tokens, fault=fault), shape=False)

        retries = check_invisible_retry(server, client, outcome, seed, tokens)
    # Events 1-3 are message_start, ping and content_block_start: no text reached the client yet.
    assert retries[0]["mode"] == ("transparent" if after_events <= 3 else "continue"), retries
    if kind == "error_event":
        assert "overloaded_error" in retries[0]["reason"], retries
    outcome.assert_shape()


@pytest.mark.parametrize("status, retry_after_s", [(529, None), (429, 1)], ids=["529", "429-retry-after-1s"])
def test_http_status_once_is_retried(server, client, status, retry_after_s):
    fault = {"kind": "http_status", "status": status, "times": 1}
    if retry_after_s is not None:
        fault["retry_after_s"] = retry_after_s
    outcome = client.send_message(send_request(seed=status, output_tokens=40, fault=fault), shape=False)

    retries = check_invisible_retry(server, client, outcome, seed=status, output_tokens=40)
    assert [r["mode"] for r in retries] == ["transparent"]
    assert str(status) in retries[0]["reason"], retries
    if retry_after_s is not None:
        assert retries[0]["delay_ms"] >= retry_after_s * 1000, "retry-after was not honoured"
    outcome.assert_shape()


@pytest.mark.parametrize("fault, code", [
    pytest.param({"kind": "drop", "after_events": 10}, "UNAVAILABLE", id="drop"),
    pytest.param({"kind": "error_event", "after_events": 10}, "UNAVAILABLE", id="error_event"),
    pytest.param({"kind": "stall", "after_events": 10}, "UNAVAILABLE", id="stall"),
    pytest.param({"kind": "http_status", "status": 529}, "UNAVAILABLE", id="529"),
    pytest.param({"kind": "http_status", "status": 429, "retry_after_s": 1}, "RESOURCE_EXHAUSTED", id="429"),
])
def test_fault_beyond_retry_budget_is_a_clean_error(start_server, fault, code):
    server = start_server("--max-retries", "1", *fault_flags(fault["kind"]))
    with SluiceClient(server.port) as client:
        outcome = client.send_message(send_request(seed=5, output_tokens=40, fault={**fault, "times": 2}),
                                      shape=False)

    assert outcome.code == code, outcome.details
    assert outcome.types[-1] == "stream_error"
    assert outcome.events[-1]["details"]["code"] == code
    assert "after 2 attempts" in outcome.details, outcome.details
    assert len(outcome.of_type("upstream_retry")) == 1, "the budget is one retry"
    assert outcome.types.count("message_start") <= 1
    assert scrape(server.port).counter("sluice_streams_completed_total", status=code) == 1
    outcome.assert_shape()


# MARK: 5. Resume and Cancel


def start_and_vanish(port: int, request: dict, events: int) -> list[dict]:
    """Starts SendMessage over raw frames, reads at least `events` events, then drops the TCP
    connection (no RST_STREAM, no GOAWAY). Returns the events read, checked as a stream prefix."""
    frames = FrameClient(port)
    read = frame_read_events(frames, frame_send_message(frames, request), events)
    drop_connection(frames)
    assert read[0]["type"] == "message_start"
    assert [e["seq"] for e in read] == list(range(1, len(read) + 1))
    return read


def test_resume_after_connection_loss_sees_every_event_once(client):
    request = slow_request(seed=11, seconds=2, output_tokens=20)
    first_part = start_and_vanish(client.port, request, events=4)

    rest = client.resume(first_part[-1]["stream_id"], after_seq=first_part[-1]["seq"])

    assert rest.code == "OK"
    whole = first_part + rest.events
    assert_stream_shape(whole, "OK")
    assert message_text(whole) == reference_text(client, seed=11, output_tokens=20)


def test_cancel_call_ends_resumed_stream(server, client):
    first_part = start_and_vanish(server.port, slow_request(seed=12, seconds=10), events=2)
    stream_id = first_part[0]["stream_id"]
    attached = client.start_resume(stream_id, after_seq=0)
    assert attached.take(len(first_part)) == first_part  # the replay

    assert client.cancel(stream_id) == {"stream_id": stream_id, "cancelled": True}

    outcome = attached.finish()  # the whole stream, seq 1.., ending with stream_error CANCELLED
    assert outcome.code == "CANCELLED"
    assert "Cancel" in outcome.events[-1]["error"], outcome.events[-1]
    wait_idle(server.port)


def test_rst_stream_cancel_ends_stream_at_once(server, client):
    with FrameClient(server.port) as frames:
        h2_stream = frame_send_message(frames, slow_request(seed=13, seconds=10))
        stream_id = frame_read_events(frames, h2_stream, 2)[0]["stream_id"]
        frames.reset(h2_stream, CANCEL)

        wait_for_metrics(
            server.port,
            lambda m: m.value(SIMULATOR_ACTIVE) == 0 and m.value(STREAMS_ACTIVE) == 0
            and m.counter("sluice_streams_completed_total", status="CANCELLED") == 1,
            f"{SIMULATOR_ACTIVE} 0, {STREAMS_ACTIVE} 0 and one CANCELLED stream",
        )
    # The stream is over for good: a Resume replays it up to its stream_error CANCELLED.
    replay = client.resume(stream_id)
    assert replay.code == "CANCELLED"


# MARK: 6. Abandoned streams


def test_abandoned_stream_is_cleaned_up_after_grace(start_server):
    server = start_server("--abandon-grace", "500ms")
    first_part = start_and_vanish(server.port, slow_request(seed=14, seconds=20), events=2)

    wait_for_metrics(
        server.port,
        lambda m: m.value(SIMULATOR_ACTIVE) == 0 and m.counter("sluice_streams_abandoned_cleaned_total") >= 1
        and m.value(STREAMS_ACTIVE) == 0 and m.value(STREAMS_QUEUED) == 0,
        f"{SIMULATOR_ACTIVE} 0, an abandoned stream cleaned, {STREAMS_ACTIVE} and {STREAMS_QUEUED} 0",
        timeout=0.5 + 1.0,
    )
    with SluiceClient(server.port) as client:
        replay = client.resume(first_part[0]["stream_id"])
    assert replay.code == "CANCELLED"
    assert "abandon grace of" in replay.events[-1]["error"], replay.events[-1]


# MARK: 7. Authentication and isolation


@pytest.fixture(params=["SLUICE_API_KEYS", "--keys-file"])
def keyed_server(request, start_server, monkeypatch, tmp_path):
    """A server whose callers are `alpha` and `beta`, configured by environment or keys file."""
    monkeypatch.delenv("SLUICE_API_KEYS", raising=False)
    if request.param == "SLUICE_API_KEYS":
        monkeypatch.setenv("SLUICE_API_KEYS", "alpha, beta")
        return start_server()
    keys = tmp_path / "keys"
    keys.write_text("# callers\nalpha\n\nbeta  # the other team\n")
    return start_server("--keys-file", str(keys))


@pytest.mark.parametrize("token", [None, "gamma", "alphabet"], ids=["none", "wrong", "prefix"])
def test_missing_or_wrong_token_is_unauthenticated(keyed_server, token):
    with SluiceClient(keyed_server.port, token) as client:
        outcome = client.send_message(send_request(seed=20))
        assert (outcome.code, outcome.events) == ("UNAUTHENTICATED", [])
        assert client.resume("st_0000000000000000").code == "UNAUTHENTICATED"
        assert rpc_error(client.cancel, "st_0000000000000000").code().name == "UNAUTHENTICATED"
    with SluiceClient(keyed_server.port, "alpha") as client:
        assert client.send_message(send_request(seed=20)).code == "OK"


@pytest.mark.parametrize("authorization", ["Bearer", "Basic alpha", "alpha"])
def test_malformed_authorization_is_unauthenticated(keyed_server, authorization):
    with FrameClient(keyed_server.port) as frames:
        result = frames.wait_closed(frame_send_message(frames, send_request(seed=20), extra=[("authorization", authorization)]))
    assert result.trailers_only and result.grpc_status == 16, result.header_blocks
    assert "Bearer" in result.grpc_message


def test_streams_are_isolated_by_caller_key(keyed_server):
    with SluiceClient(keyed_server.port, "alpha") as alpha, SluiceClient(keyed_server.port, "beta") as beta:
        owner = alpha.start(slow_request(seed=21, seconds=10))
        stream_id = owner.take(1)[0]["stream_id"]

        foreign_resume = beta.resume(stream_id)
        foreign_cancel = rpc_error(beta.cancel, stream_id)
        unknown = beta.resume("st_0000000000000000")
        assert (foreign_resume.code, foreign_resume.events) == ("NOT_FOUND", [])
        assert foreign_cancel.code().name == "NOT_FOUND"
        # A foreign stream looks exactly like one that never existed.
        assert foreign_resume.details == unknown.details.replace("st_0000000000000000", stream_id)

        assert alpha.cancel(stream_id) == {"stream_id": stream_id, "cancelled": True}
        assert owner.finish().code == "CANCELLED"
        replay = alpha.resume(stream_id)
    assert replay.code == "CANCELLED"
    assert replay.events == owner.events


def test_non_loopback_without_keys_refuses_to_start(sluice_bin, monkeypatch):
    monkeypatch.delenv("SLUICE_API_KEYS", raising=False)
    result = subprocess.run([sluice_bin, "serve", "--host", "0.0.0.0", "--port", "0"], stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=IO_TIMEOUT)
    assert result.returncode != 0
    assert b"listening" not in result.stdout
    assert b"--allow-unauthenticated" in result.stderr, result.stderr


# MARK: 8. Request validation


def without(field: str) -> dict:
    request = send_request(seed=30)
    del request[field]
    return request


def with_field(field: str, value) -> dict:
    return {**send_request(seed=30), field: value}


@pytest.mark.parametrize("request_message, field", [
    pytest.param(without("model"), "model", id="missing-model"),
    pytest.param(with_field("model", ""), "model", id="empty-model"),
    pytest.param(with_field("max_tokens", 0), "max_tokens", id="max_tokens-0"),
    pytest.param(with_field("max_tokens", 128_001), "max_tokens", id="max_tokens-too-big"),
    pytest.param(with_field("max_tokens", "ten"), "max_tokens", id="max_tokens-string"),
    pytest.param(without("max_tokens"), "max_tokens", id="missing-max_tokens"),
    pytest.param(with_field("messages", []), "messages", id="empty-messages"),
    # Unknown fields pass through to the API (test_claude_features.py); a mistyped Sluice field does not.
    pytest.param(with_field("include_message", "yes"), "include_message", id="include_message-string"),
])
def test_invalid_request_names_the_field(client, request_message, field):
    without_scenario = {k: v for k, v in request_message.items() if k != "simulation"}
    assert not REQUEST_VALIDATOR.is_valid(without_scenario), "the request schema accepts it too"

    outcome = client.send_message(request_message)

    assert (outcome.code, outcome.events) == ("INVALID_ARGUMENT", [])
    assert f"'{field}'" in outcome.details, outcome.details


def test_request_schema_resolves_simulation_scenario():
    assert REQUEST_VALIDATOR.is_valid(send_request(seed=1))


# MARK: 9. Health


def test_health_check_json(client):
    assert client.health() == {"status": "SERVING"}
    assert client.health("sluice.v1.StreamingService") == {"status": "SERVING"}


def test_health_check_protobuf(server):
    with FrameClient(server.port) as frames:
        result = frames.call(HEALTH_CHECK, envelope(b""), content_type="application/grpc")
    assert result.grpc_status == 0, result.grpc_message
    assert [payload for _, payload in result.envelopes] == [b"\x08\x01"]


@pytest.mark.parametrize("path, body", [("/healthz", "ok\n"), ("/readyz", "ready\n")])
def test_liveness_and_readiness(server, path, body):
    assert http_get(server.port, path) == (200, body)


# MARK: 10. Metrics

DELIVERY = "sluice_event_delivery_latency_seconds"


def test_every_event_is_timed_once_in_the_delivery_histogram(start_server):
    server = start_server()
    before = scrape(server.port)
    with SluiceClient(server.port) as client:
        outcome = client.send_message(send_request(seed=5, output_tokens=30))
    assert outcome.code == "OK"
    # Recorded as each frame is handed to the connection, so complete once the client has the trailers.
    after = scrape(server.port)

    count = after.counter(f"{DELIVERY}_count")
    assert count - before.counter(f"{DELIVERY}_count") == len(outcome.events)
    assert after.counter(f"{DELIVERY}_bucket", le="+Inf") == count
    bounds = sorted((float(dict(k)["le"]), v) for k, v in after.samples[f"{DELIVERY}_bucket"].items())
    assert [v for _, v in bounds] == sorted(v for _, v in bounds), "cumulative buckets never decrease"
    assert bounds[0][0] <= 0.0001, "buckets resolve sub-millisecond delivery"
    assert after.counter(f"{DELIVERY}_sum") > 0
    assert after.counter("sluice_time_to_first_token_seconds_count") - before.counter(
        "sluice_time_to_first_token_seconds_count") == 1
