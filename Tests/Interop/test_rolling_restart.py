"""A rolling restart under load: three `sluice serve` replicas sharing one `redis-server` and one `sluice simulate`,
and INTEROP_ROLLING_STREAMS (60 here, 300 in `make chaos-cluster`) long streams through a grpcio channel that balances
over the three (round robin, as a client behind a Kubernetes Service would be spread). Each replica in turn gets
SIGTERM, must exit having handed its streams off (not waiting for its 60 s --drain-timeout), and is started again on
its port as a new replica; the clients resume each stream that ends UNAVAILABLE after its last event.

Every stream must end OK with exactly its fault-free text, every seq once; nothing is lost, so no continuation may
say `replica_lost`. Waits are on signals: process exits and their log lines, /metrics, the streams' own ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from dataclasses import dataclass, field

import grpc
import pytest

from sluice_testlib import IO_TIMEOUT
from streaming_testlib import (
    RESUME,
    SEND_MESSAGE,
    TERMINAL_TYPES,
    StreamShapeError,
    assert_stream_shape,
    message_text,
    send_request,
    slow_request,
    to_json,
    wait_for_metrics,
)
from test_store import port_outside_the_ephemeral_range, redis, simulator  # noqa: F401  (fixtures)

STREAMS = int(os.environ.get("INTEROP_ROLLING_STREAMS", "60"))
AUTH = [("authorization", "Bearer alpha")]
# Long enough to outlive three restarts on a busy machine: each restart is a 500 ms window, the exit and a start-up.
STREAM_SECONDS = 30
OUTPUT_TOKENS = 90
DRAIN_TIMEOUT_S = 60
# Resume calls in a row that may fail (no replica ready, or one that is itself draining) before a stream gives up.
MAX_RESUME_ATTEMPTS = 40


def balanced_options() -> list[tuple[str, object]]:
    """Round robin over every address, reconnecting quickly to a replica that comes back."""
    return [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0), ("grpc.lb_policy_name", "round_robin"),
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000)]


@dataclass
class StreamRun:
    """One stream as its client saw it: every event, its final status, and the calls it took."""

    index: int
    events: list[dict] = field(default_factory=list)
    code: str = ""
    details: str = ""
    resumes: int = 0
    resent: int = 0


class Cluster:
    """Three replicas on fixed ports (so a restarted one takes its predecessor's place), named a, b, c and then a2…"""

    def __init__(self, start_server, redis_url: str, simulator_url: str, extra: list[str]):
        self.start_server = start_server
        self.redis_url = redis_url
        self.simulator_url = simulator_url
        self.extra = extra
        self.ports = [port_outside_the_ephemeral_range() for _ in range(3)]
        self.replicas = [self.start(name, port) for name, port in zip("abc", self.ports)]

    def start(self, name: str, port: int):
        replica = self.start_server("--port", str(port), "--store", self.redis_url, "--replica-id", name,
                                    "--upstream-url", self.simulator_url, "--upstream-is-simulator",
                                    "--drain-timeout", f"{DRAIN_TIMEOUT_S}s", "--log-level", "notice", *self.extra)
        assert replica.port == port, (replica.port, port)
        wait_for_metrics(port, lambda m: m.value("sluice_store_up") == 1, f"replica {name}'s store up")
        return replica

    @property
    def target(self) -> str:
        return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in self.ports)


def handed_off(log: str) -> int:
    """How many streams a replica's log says it handed off, checking the store acknowledged every one."""
    for line in log.splitlines():
        if "handed off " in line and "; the store acknowledged " in line:
            count, acknowledged = line.split("handed off ")[1].split(" streams; the store acknowledged ")
            acknowledged = acknowledged.split()[0]
            assert count == acknowledged, line
            return int(count)
        if "no stream left to hand off" in line:
            return 0
    raise AssertionError(f"the replica never said what it handed off:\n{log}")


async def run_stream(channel, run: StreamRun, request: dict, on_first_event=lambda: None, resend_unanswered: bool = False) -> None:
    """SendMessage, then Resume after the last event whenever a call ends UNAVAILABLE, until the stream ends.
    `resend_unanswered`: a SendMessage that failed before its first event (its replica died) is sent again, as a new
    stream (a client cannot resume a stream whose id it never learned)."""
    send = channel.unary_stream(SEND_MESSAGE, request_serializer=to_json, response_deserializer=json.loads)
    resume = channel.unary_stream(RESUME, request_serializer=to_json, response_deserializer=json.loads)
    call = send(request, metadata=AUTH)
    failures = 0
    while True:
        try:
            async for event in call:
                run.events.append(event)
                failures = 0
                if len(run.events) == 1:
                    on_first_event()
            run.code = "OK"
            return
        except grpc.aio.AioRpcError as error:
            run.code, run.details = error.code().name, error.details() or ""
            unavailable = error.code() == grpc.StatusCode.UNAVAILABLE
            # After stream_error the stream is over (its UNAVAILABLE is the upstream's), as SluiceClient decides.
            ended = bool(run.events) and run.events[-1]["type"] in TERMINAL_TYPES
            if not unavailable or ended or failures == MAX_RESUME_ATTEMPTS or not (run.events or resend_unanswered):
                return
        failures += 1
        await asyncio.sleep(0.05 * min(failures, 10))  # backoff between resumes, as SluiceClient's
        if run.events:
            run.resumes += 1
            call = resume({"stream_id": run.events[0]["stream_id"], "after_seq": run.events[-1]["seq"]}, metadata=AUTH)
        else:
            run.resent += 1
            call = send(request, metadata=AUTH)


async def roll(cluster: Cluster, started: asyncio.Event) -> list[int]:
    """SIGTERM each replica in turn once every stream runs; each must exit 0 after handing its streams off (not at its
    drain timeout), and is started again on its port before the next one goes. Returns each one's hand-off count."""
    await started.wait()
    counts = []
    for index, name in enumerate("abc"):
        replica = cluster.replicas[index]
        replica.signal(signal.SIGTERM)
        code = await asyncio.to_thread(replica.wait, DRAIN_TIMEOUT_S / 2)
        log = replica.stderr()
        assert code == 0, log
        assert "the drain timeout has passed" not in log, log
        counts.append(handed_off(log))
        cluster.replicas[index] = await asyncio.to_thread(cluster.start, f"{name}2", cluster.ports[index])
    return counts


async def rolling_restart(cluster: Cluster, references: list[dict], requests: list[dict]) -> tuple[list[str], list[StreamRun], list[int]]:
    """The fault-free texts of `references`, then the rolling restart under `requests`, on one channel: the fault-free
    run connects it to every replica, so round robin spreads the long streams over all three."""
    started = asyncio.Event()
    counter = [0]

    def on_first_event() -> None:
        counter[0] += 1
        if counter[0] == len(requests):
            started.set()

    runs = [StreamRun(index) for index in range(len(requests))]
    async with grpc.aio.insecure_channel(cluster.target, options=balanced_options()) as channel:
        texts = await fault_free_texts(channel, references)
        streams = asyncio.gather(*(run_stream(channel, run, request, on_first_event) for run, request in zip(runs, requests)))
        counts = await roll(cluster, started)
        await streams
    return texts, runs, counts


async def fault_free_texts(channel, requests: list[dict]) -> list[str]:
    send = channel.unary_stream(SEND_MESSAGE, request_serializer=to_json, response_deserializer=json.loads)

    async def text(request: dict) -> str:
        return message_text([event async for event in send(request, metadata=AUTH)])

    return await asyncio.gather(*(text(request) for request in requests))


async def fault_free(target: str, requests: list[dict]) -> list[str]:
    async with grpc.aio.insecure_channel(target, options=balanced_options()) as channel:
        return await fault_free_texts(channel, requests)


@pytest.mark.timeout(600)
def test_a_rolling_restart_of_every_replica_loses_and_repeats_nothing(start_server, redis, simulator, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SLUICE_API_KEYS", "alpha")
    cluster = Cluster(start_server, redis.url, simulator, ["--handoff-after", "500ms"])
    seeds = [7_000 + index for index in range(STREAMS)]
    requests = [slow_request(seed, seconds=STREAM_SECONDS, output_tokens=OUTPUT_TOKENS) for seed in seeds]
    references, runs, counts = asyncio.run(
        rolling_restart(cluster, [send_request(seed, OUTPUT_TOKENS) for seed in seeds], requests))

    failures = []
    for run, reference in zip(runs, references):
        try:
            assert_stream_shape(run.events, run.code)
        except StreamShapeError as error:
            failures.append(f"stream {run.index}: {error}")
            continue
        reasons = {event["reason"] for event in run.events if event["type"] == "upstream_retry"}
        if run.code != "OK":
            failures.append(f"stream {run.index} ended {run.code}: {run.details}")
        elif message_text(run.events) != reference:
            failures.append(f"stream {run.index}: text differs from the fault-free run")
        elif not reasons <= {"handoff"}:
            failures.append(f"stream {run.index}: continued for {reasons}, but no replica was lost")
    handoffs = sum(1 for run in runs for event in run.events if event["type"] == "stream_handoff")
    print(f"rolling restart: {STREAMS} streams, hand-offs per replica {counts}, {handoffs} stream_handoff events, "
          f"{sum(run.resumes for run in runs)} resume calls")
    assert not failures, f"{len(failures)} of {STREAMS} streams went wrong:\n" + "\n".join(failures[:20])
    # The streams were spread over the replicas and outlived the restarts: each was handed off at least once, by the
    # replica it started on, and each replica had streams to hand off.
    assert sum(counts) >= STREAMS and all(counts) and handoffs == sum(counts), (counts, handoffs)
    for replica in cluster.replicas:
        wait_replica_idle(replica.port)


# A replica on an external simulator has no simulator gauges.
REPLICA_IDLE_GAUGES = ("sluice_streams_active", "sluice_streams_queued", "sluice_upstream_open_transfers")


def wait_replica_idle(port: int, timeout: float = IO_TIMEOUT) -> None:
    wait_for_metrics(port, lambda m: all(m.value(g) == 0 for g in REPLICA_IDLE_GAUGES),
                     " and ".join(f"{g} 0" for g in REPLICA_IDLE_GAUGES), timeout)
