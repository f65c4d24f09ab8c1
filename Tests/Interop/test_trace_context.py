"""W3C trace context: a caller's traceparent names the stream's trace in its log line, and every upstream attempt
carries a child traceparent of it (the simulator, run as its own process, records the last one per trace)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request

import pytest

from sluice_testlib import IO_TIMEOUT, SluiceServer
from streaming_testlib import SluiceClient, send_request

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@pytest.fixture
def simulator(sluice_bin):
    proc = subprocess.Popen([sluice_bin, "simulate", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    port = int(line.split("127.0.0.1:")[1].split()[0])
    yield port
    proc.kill()
    proc.wait()


@pytest.fixture
def traced_server(sluice_bin, simulator, tmp_path):
    server = SluiceServer(sluice_bin, ["--upstream-url", f"http://127.0.0.1:{simulator}", "--upstream-is-simulator",
                                       "--log-format", "json", "--max-retries", "3"], tmp_path / "server.stderr")
    yield server
    server.kill()


def recorded(simulator_port: int, trace_id: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{simulator_port}/v1/_simulator/traces/{trace_id}", timeout=IO_TIMEOUT) as response:
        return json.loads(response.read())


def stream_log_line(server: SluiceServer, stream_id: str) -> dict:
    """The stream's `stream finished` line, waited for (it is written as the stream ends)."""
    deadline = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < deadline:
        for line in server.stderr().splitlines():
            if stream_id in line and "stream finished" in line:
                return json.loads(line)
        time.sleep(0.05)
    raise AssertionError(f"no log line for {stream_id}:\n{server.stderr()}")


def call(server: SluiceServer, request: dict, metadata=()):
    with SluiceClient(server.port) as client:
        reader = client._send(request, metadata=tuple(metadata))
        events = list(reader)
    assert events[-1]["type"] == "stream_complete", events[-1]
    return events


def test_caller_trace_reaches_the_log_line_and_every_attempt(traced_server, simulator):
    # The first attempt is dropped mid-stream, so two attempts reach the simulator.
    request = send_request(seed=4, output_tokens=30, fault={"kind": "drop", "after_events": 4, "times": 1})
    events = call(traced_server, request, [("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01"), ("tracestate", "acme=7")])
    assert any(event["type"] == "upstream_retry" for event in events)
    line = stream_log_line(traced_server, events[0]["stream_id"])
    assert json.dumps(line).count(TRACE_ID) == 1, line
    seen = recorded(simulator, TRACE_ID)
    assert seen["requests"] == 2
    trace_id, span_id, flags = TRACEPARENT.match(seen["traceparent"]).groups()
    assert (trace_id, flags) == (TRACE_ID, "01")
    assert span_id != CALLER_SPAN, "each attempt is a child span, not the caller's"


@pytest.mark.parametrize("metadata", [[], [("traceparent", "00-not-a-trace-id-01")], [("traceparent", f"00-{'0' * 32}-{CALLER_SPAN}-01")]])
def test_a_missing_or_malformed_traceparent_starts_a_new_trace(traced_server, simulator, metadata):
    events = call(traced_server, send_request(seed=5, output_tokens=10), metadata)
    line = json.dumps(stream_log_line(traced_server, events[0]["stream_id"]))
    trace_id = re.search(r'"trace_id": "([0-9a-f]{32})"', line).group(1)
    assert trace_id != "0" * 32
    seen = recorded(simulator, trace_id)
    assert seen["requests"] == 1
    assert TRACEPARENT.match(seen["traceparent"]).group(1) == trace_id
