"""Hand-off on drain (`--store redis://…`, `--handoff-after`): on SIGTERM a replica gives its running streams a short
window to finish, then stops the rest at an event boundary, appends `stream_handoff`, releases their leases and exits
long before `--drain-timeout`; the replica a client resumes on claims each stream at once and continues it
(`upstream_retry` reason `handoff`). Two `sluice serve` replicas, one `sluice simulate`, one `redis-server`.

The leases here last 30 s, longer than any wait in these tests: a resume that had to wait for a lease to lapse would
time out, so a continued stream proves the lease was released. The drain timeout is 60 s, and each SIGTERMed replica
must exit (and say it handed its streams off) within the tests' I/O timeout.
Waits are on signals: the streams' own ends, log lines, /metrics, process exits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import anthropic
import grpc
import pytest

from sluice_testlib import IO_TIMEOUT
from streaming_testlib import (
    CHANNEL_OPTIONS,
    SEND_MESSAGE,
    assert_stream_shape,
    message_text,
    send_request,
    slow_request,
    to_json,
    wait_for_metrics,
)
from test_console import ConsolePage, browser, numbered_words, paragraphs, words_shown  # noqa: F401  (fixture)
from test_sse import STREAMS, check_event, http_client, post_stream, read_events, url
from test_store import port_outside_the_ephemeral_range, redis, resume_rpc, simulator  # noqa: F401  (fixtures)
from test_takeover import logged

LONG_LEASE = ["--lease-ttl", "30s", "--lease-renew", "1s"]
DRAIN = ["--drain-timeout", "60s"]
HANDED_OFF = "this server is shutting down and handed the stream off"


@pytest.fixture
def replicas(start_server, redis, simulator, monkeypatch):  # noqa: F811
    """`replicas(*flags)`: replicas a and b sharing `redis`, caller `alpha`, a 200 ms hand-off window unless `flags`
    say otherwise."""
    monkeypatch.setenv("SLUICE_API_KEYS", "alpha")

    def start(*flags: str):
        started = [
            start_server("--store", redis.url, "--replica-id", name, "--upstream-url", simulator, "--upstream-is-simulator",
                         *LONG_LEASE, *DRAIN, "--handoff-after", "200ms", *flags)
            for name in "ab"
        ]
        for replica in started:
            wait_for_metrics(replica.port, lambda m: m.value("sluice_store_up") == 1, "the store up")
        return started

    return start


def reference_text(port: int, seed: int, output_tokens: int) -> str:
    """The text of a fault-free run of the same scenario."""
    with http_client("alpha") as client:
        return message_text(read_events(client, port, post_stream(client, port, send_request(seed, output_tokens))))


def send_message(port: int, request: dict, on_event) -> tuple[list[dict], grpc.StatusCode, str]:
    """SendMessage through grpcio to its end; `on_event(events)` runs after each event."""
    events: list[dict] = []
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        send = channel.unary_stream(SEND_MESSAGE, request_serializer=to_json, response_deserializer=json.loads)
        call = send(request, timeout=IO_TIMEOUT * 3, metadata=[("authorization", "Bearer alpha")])
        try:
            for event in call:
                events.append(event)
                on_event(events)
        except grpc.RpcError as error:
            return events, error.code(), error.details() or ""
    return events, grpc.StatusCode.OK, ""


def sigterm_when(replica, count: int):
    """An `on_event` that sends SIGTERM to `replica` once `count` events have arrived."""
    def on_event(events: list[dict]) -> None:
        if len(events) == count:
            replica.signal(signal.SIGTERM)
    return on_event


def assert_exited_after_handing_off(replica, streams: int) -> str:
    """The replica exits 0 without waiting for its drain timeout, having handed `streams` streams off (each
    acknowledged by the store); returns its log."""
    assert replica.wait(timeout=IO_TIMEOUT) == 0, replica.stderr()
    log = replica.stderr()
    assert f"handed off {streams} streams; the store acknowledged {streams}" in log, log
    assert "the drain timeout has passed" not in log, log
    return log


def test_sigterm_hands_a_running_stream_off_and_resume_on_another_replica_continues_it(replicas, redis):  # noqa: F811
    a, b = replicas()
    reference = reference_text(b.port, seed=31, output_tokens=40)
    first, code, details = send_message(a.port, slow_request(seed=31, seconds=5, output_tokens=40), sigterm_when(a, 5))
    # The attached client gets the marker at an event boundary, then UNAVAILABLE: nothing is lost with a's exit.
    assert (code, first[-1]["type"]) == (grpc.StatusCode.UNAVAILABLE, "stream_handoff"), (code, details, first[-3:])
    assert HANDED_OFF in details and first[-1]["reason"] == "shutdown"
    assert_exited_after_handing_off(a, 1)
    stream_id = first[0]["stream_id"]
    rest = resume_rpc(b.port, stream_id, first[-1]["seq"])
    whole = first + rest
    assert_stream_shape(whole, "OK")  # every seq exactly once, in order
    assert message_text(whole) == reference
    retries = [(event["reason"], event["mode"]) for event in whole if event["type"] == "upstream_retry"]
    assert retries == [("handoff", "continue")], retries
    assert logged(redis, stream_id) == whole
    assert wait_for_metrics(b.port, lambda m: m.value("sluice_streams_taken_over_total", 0) == 1, "b took the stream over")


def test_an_sse_reader_reconnects_with_last_event_id_on_another_replica(replicas):
    a, b = replicas()
    reference = reference_text(b.port, seed=32, output_tokens=40)
    # HTTP/1.1, as browsers read event streams (httpx2's h2 ends every stream at the drain's first GOAWAY).
    with http_client("alpha", protocol="http1.1") as client:
        stream_id = post_stream(client, a.port, slow_request(seed=32, seconds=5, output_tokens=40))
        first = []
        with client.sse(url(a.port, f"{STREAMS}/{stream_id}/events")) as source:
            for sse in source:
                first.append(check_event(sse.id, sse.event, sse.data))
                if len(first) == 4:
                    a.signal(signal.SIGTERM)
        # The response ended without stream_complete or stream_error: an EventSource reconnects.
        assert first[-1]["type"] == "stream_handoff", first[-3:]
        assert_exited_after_handing_off(a, 1)
        rest = read_events(client, b.port, stream_id, headers={"last-event-id": str(first[-1]["seq"])})
    whole = first + rest
    assert_stream_shape(whole, "OK")
    assert message_text(whole) == reference


def test_a_stream_nobody_reads_is_handed_off_and_finished_by_a_sweeper(replicas):
    a, b = replicas()
    reference = reference_text(a.port, seed=33, output_tokens=40)
    with http_client("alpha") as client:
        stream_id = post_stream(client, a.port, slow_request(seed=33, seconds=6, output_tokens=40))
        first = read_events(client, a.port, stream_id, limit=5)  # then the client goes away
    a.signal(signal.SIGTERM)
    assert_exited_after_handing_off(a, 1)
    # Released and due at once in the sweepers' index: b's sweeper claims it without waiting for the 30 s lease.
    wait_for_metrics(b.port, lambda m: m.value("sluice_streams_completed_total", 0, status="OK") == 1, "the stream finished on b",
                     timeout=3 * IO_TIMEOUT)
    whole = resume_rpc(b.port, stream_id, 0)
    assert_stream_shape(whole, "OK")
    assert whole[:5] == first
    assert message_text(whole) == reference
    assert [e["type"] for e in whole].count("stream_handoff") == 1


def test_a_stream_that_ends_within_the_window_is_not_handed_off(replicas):
    a, _ = replicas("--handoff-after", "20s")
    events, code, _ = send_message(a.port, slow_request(seed=34, seconds=1.5, output_tokens=15), sigterm_when(a, 3))
    assert code == grpc.StatusCode.OK
    assert_stream_shape(events, "OK")
    assert "stream_handoff" not in [event["type"] for event in events]
    assert a.wait(timeout=IO_TIMEOUT) == 0
    assert "no stream left to hand off" in a.stderr(), a.stderr()


def test_with_the_store_down_the_drain_runs_streams_out_as_before(replicas, redis):  # noqa: F811
    a, _ = replicas()
    reference = reference_text(a.port, seed=35, output_tokens=30)

    def on_event(events: list[dict]) -> None:
        if len(events) == 3:
            redis.kill()
            wait_for_metrics(a.port, lambda m: m.value("sluice_store_up") == 0, "the store down")
            a.signal(signal.SIGTERM)

    events, code, details = send_message(a.port, slow_request(seed=35, seconds=3, output_tokens=30), on_event)
    assert code == grpc.StatusCode.OK, details
    assert_stream_shape(events, "OK")
    assert message_text(events) == reference
    assert a.wait(timeout=IO_TIMEOUT) == 0
    log = a.stderr()
    assert "keeping a stream through the drain" in log and "shared store is unreachable" in log, log


def test_a_v1_messages_stream_runs_out_the_drain_on_its_replica(replicas):
    a, _ = replicas()
    # HTTP/1.1, the SDK's default (httpx2's h2 ends every stream at the drain's first GOAWAY).
    http = anthropic.DefaultHttpxClient()
    body = {"model": "claude-sim-1", "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}]}
    with anthropic.Anthropic(base_url=f"http://127.0.0.1:{a.port}", api_key="alpha", http_client=http, max_retries=0) as client:
        clean = client.messages.create(**body, extra_body={"simulation": {"seed": 36, "output_tokens": 20}})
        with client.messages.stream(**body, extra_body={"simulation": {"seed": 36, "output_tokens": 20, "token_interval_ms": 100}}) as stream:
            for count, _ in enumerate(stream.text_stream, start=1):
                if count == 3:
                    a.signal(signal.SIGTERM)
            final = stream.get_final_message()
    # Its client has no Resume: the stream ends whole on a, as without a store.
    assert final.content[0].text == clean.content[0].text
    assert a.wait(timeout=IO_TIMEOUT) == 0
    log = a.stderr()
    assert "keeping a stream through the drain" in log and "/v1/messages" in log, log


# MARK: Clients that resume by themselves, behind a balancer


class Balancer:
    """nghttpx (Debian's nghttp2-proxy) in front of the replicas, as a Kubernetes Service or an L7 balancer would be:
    h2c and HTTP/1.1 on one port, round robin over the replicas (h2c), no stickiness. A replica that has closed its
    listener is skipped."""

    def __init__(self, backends: list[int], directory):
        self.port = port_outside_the_ephemeral_range()
        self.log = directory / "nghttpx.log"
        self.proc = subprocess.Popen(
            ["nghttpx", "--conf=/dev/null", f"--frontend=127.0.0.1,{self.port};no-tls", "--workers=1",
             *[f"--backend=127.0.0.1,{port};;proto=h2" for port in backends],
             "--backend-read-timeout=5m", "--frontend-read-timeout=5m", f"--errorlog-file={self.log}",
             "--accesslog-file=/dev/null"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        while True:  # ready once it accepts connections (pytest-timeout guards against a hang)
            assert self.proc.poll() is None, f"nghttpx exited: {self.log.read_text(errors='replace')}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT).close()
                return
            except ConnectionRefusedError:
                continue

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=IO_TIMEOUT)


@pytest.fixture
def balancer(tmp_path):
    balancers = []

    def start(backends: list[int]) -> Balancer:
        balancers.append(Balancer(backends, tmp_path))
        return balancers[-1]

    yield start
    for running in balancers:
        running.stop()


def owner_of(redis, stream_id: str, replicas):  # noqa: F811
    """The replica running `stream_id`, from its metadata in the store."""
    owner = redis.cli("HGET", f"sluice:{{{stream_id}}}:meta", "owner")
    return {"a": replicas[0], "b": replicas[1]}[owner]


def sluice_call(sluice_bin: str, port: int, simulation: dict) -> subprocess.Popen:
    """`sluice call --json` (the Swift client library) at `port`, as caller alpha."""
    return subprocess.Popen(
        [sluice_bin, "call", "--target", f"http://127.0.0.1:{port}", "--json", "--simulation", json.dumps(simulation), "hello"],
        env={**os.environ, "SLUICE_TOKEN": "alpha"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sluice_call_resumes_by_itself_when_its_replica_hands_the_stream_off(replicas, redis, balancer, sluice_bin):  # noqa: F811
    a, b = replicas()
    front = balancer([a.port, b.port])
    fault_free = sluice_call(sluice_bin, front.port, {"seed": 37, "output_tokens": 40})
    reference = message_text([json.loads(line) for line in fault_free.communicate(timeout=IO_TIMEOUT)[0].splitlines()])
    call = sluice_call(sluice_bin, front.port, {"seed": 37, "output_tokens": 40, "token_interval_ms": 200})
    events = []
    owner = None
    for line in call.stdout:  # unbuffered: one event per line as it arrives
        events.append(json.loads(line))
        if len(events) == 5:
            owner = owner_of(redis, events[0]["stream_id"], (a, b))
            owner.signal(signal.SIGTERM)
    assert call.wait(timeout=IO_TIMEOUT) == 0, call.stderr.read()
    assert_exited_after_handing_off(owner, 1)
    assert_stream_shape(events, "OK")
    assert message_text(events) == reference
    types = [event["type"] for event in events]
    assert types.count("stream_handoff") == 1, types
    retries = [(event["reason"], event["mode"]) for event in events if event["type"] == "upstream_retry"]
    assert retries == [("handoff", "continue")], retries


def test_the_console_reconnects_with_last_event_id_when_its_replica_hands_the_stream_off(
        browser, replicas, redis, balancer):  # noqa: F811
    a, b = replicas()
    front = balancer([a.port, b.port])
    page = ConsolePage(browser, front.port)
    # The caller token, as typing it would store it (its input's change event).
    browser.execute_script("const input = document.getElementById('token'); input.value = arguments[0];"
                           "input.dispatchEvent(new Event('change'))", "alpha")
    words = numbered_words(200)
    page.send("Count slowly.", {"text": paragraphs(words), "token_interval_ms": 40})
    page.wait_for(lambda d: len(words_shown(page)) >= 30, "the first words")
    (stream_id,) = redis.cli("ZRANGE", "sluice:running", "0", "-1").split()  # the page's stream, the only one running
    owner = owner_of(redis, stream_id, (a, b))
    owner.signal(signal.SIGTERM)
    assert page.wait_until_finished() == "complete"
    assert words_shown(page) == words, "every word once, in order"
    assert_exited_after_handing_off(owner, 1)
