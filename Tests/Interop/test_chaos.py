"""Chaos on the upstream: many concurrent SendMessage streams through `sluice serve` on its built-in
simulator, each with a random fault (drop, stall, error event, HTTP status) at a random point that
fails a random number of attempts. Every stream must end with exactly its fault-free text, or, when
the faults outlast `--max-retries`, with the right status and a `stream_error`; seq runs 1..n without
gaps. Afterwards the active and queued gauges, the open upstream transfers and the server's open file
descriptors return to where they started.

The plan of every stream comes from one seed, printed by each test (`pytest -s` shows it, and every
failure names it). Reproduce with INTEROP_CHAOS_SEED=<seed>. `make test` runs 200 streams;
`make chaos` runs INTEROP_CHAOS_STREAMS (default 1,000).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass

import grpc
import pytest

from streaming_testlib import (
    CHANNEL_OPTIONS,
    SEND_MESSAGE,
    StreamOutcome,
    StreamShapeError,
    send_request,
    to_json,
    validate_event,
    wait_for_metrics,
    wait_idle,
)

SEED = int(os.environ.get("INTEROP_CHAOS_SEED", "20261126"))
FULL_STREAMS = int(os.environ.get("INTEROP_CHAOS_STREAMS", "1000"))
MAX_RETRIES = 2
# Stalls are caught by these; long enough that a busy 2-core machine rarely trips them on a healthy attempt.
STALL_TIMEOUT = "2s"
# 5xx statuses the API documents or proxies produce; all retryable, as is 429.
RETRYABLE_STATUSES = (429, 500, 502, 503, 504, 529)
# How many attempts fail: 0 (a fault-free control), within the budget, the whole budget plus one
# (exhausted), or every attempt (`times` absent).
TIMES_CHOICES = (0, 1, 1, 2, 2, MAX_RETRIES + 1, None)


@dataclass(frozen=True)
class StreamPlan:
    index: int
    seed: int
    output_tokens: int
    fault: dict

    @property
    def failing_attempts(self) -> int:
        """Attempts the fault fails (every one when `times` is absent)."""
        times = self.fault.get("times")
        return MAX_RETRIES + 1 if times is None else min(times, MAX_RETRIES + 1)

    @property
    def exhausts_budget(self) -> bool:
        return self.failing_attempts > MAX_RETRIES

    @property
    def exhausted_code(self) -> str:
        return "RESOURCE_EXHAUSTED" if self.fault.get("status") == 429 else "UNAVAILABLE"

    def request(self, with_fault: bool = True) -> dict:
        extra = {"fault": self.fault} if with_fault else {}
        if with_fault and self.fault.get("keep_alive"):
            extra["ping_interval_ms"] = 100
        return send_request(self.seed, self.output_tokens, **extra)


def make_plans(seed: int, count: int) -> list[StreamPlan]:
    """`count` stream plans, all from `seed`. Each stream has its own simulator seed, so its
    scenario (and the simulator's per-scenario attempt counter) is its own."""
    rng = random.Random(seed)
    plans = []
    for index in range(count):
        tokens = rng.randint(8, 60)
        kind = rng.choice(("drop", "stall", "error_event", "http_status"))
        fault: dict = {"kind": kind}
        times = rng.choice(TIMES_CHOICES)
        if times is not None:
            fault["times"] = times
        if kind == "http_status":
            fault["status"] = rng.choice(RETRYABLE_STATUSES)
            fault["retry_after_s"] = 0  # 429 would otherwise ask for 1 s
        else:
            # A text delta carries 1 to 3 tokens: events 0..2 are before any text, and anything below
            # 4 + tokens/3 is before message_stop.
            fault["after_events"] = rng.randrange(0, 4 + tokens // 3)
        if kind == "stall":
            fault["keep_alive"] = rng.random() < 0.5
        plans.append(StreamPlan(index, seed * 100_000 + index, tokens, fault))
    return plans


async def run_stream(send, request: dict) -> StreamOutcome:
    """One SendMessage call to its end: events (validated afterwards) and the final status."""
    call = send(request)
    events = []
    try:
        async for event in call:
            events.append(event)
        code, details = (await call.code()).name, await call.details() or ""
    except grpc.aio.AioRpcError as error:
        code, details = error.code().name, error.details() or ""
    return StreamOutcome(events, code, details, 0.0)


async def run_all(port: int, requests: list[dict]) -> list[StreamOutcome]:
    """Every request at once on one channel (one HTTP/2 connection)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        send = channel.unary_stream(SEND_MESSAGE, request_serializer=to_json, response_deserializer=json.loads)
        return await asyncio.gather(*(run_stream(send, request) for request in requests))


VALIDATED_SHAPES: set = set()


def validate_event_shape(event: dict) -> None:
    """Checks each distinct event shape (type, fields and their JSON types) against the schema once:
    validating all of a run's events takes longer than the run (test_streaming.py validates every one)."""
    shape = (event.get("type"), frozenset((key, type(value).__name__) for key, value in event.items()))
    if shape not in VALIDATED_SHAPES:
        validate_event(event)
        VALIDATED_SHAPES.add(shape)


# upstream_retry reasons name the failure's kind; a final error's message describes it.
TIMEOUT_REASONS = ("firstByteTimeout", "idleTimeout", "sent no model output within", "idle (no events but pings)")


def is_timeout(reason: str) -> bool:
    return any(marker in reason for marker in TIMEOUT_REASONS)


def spurious_failures(plan: StreamPlan, outcome: StreamOutcome) -> int:
    """Failed attempts beyond the plan: first-token or idle timeouts of healthy attempts on a loaded machine."""
    failures = len(outcome.of_type("upstream_retry")) + (outcome.code != "OK")
    return max(0, failures - plan.failing_attempts)


def problems_of(plan: StreamPlan, outcome: StreamOutcome, reference: str) -> list[str]:
    """What is wrong with one stream's ending, given its plan and fault-free text.

    A fault `after_events` past the end of a response fires after its message_stop, when the message is
    already complete. A continuation after a mid-text fault is shorter than the first response, so a
    later attempt may complete before its fault fires: a stream may then need fewer retries than its
    plan's failing attempts, and one planned to exhaust the budget may succeed. Faults that fire on
    every attempt whatever its length (an HTTP status, or before any text: events 0..3 are
    message_start, ping and content_block_start) must use the whole budget and end in the error.
    On a busy machine a healthy attempt may also hit the first-token or idle timeout: failures beyond
    the plan are accepted when they are timeouts (counted by `spurious_failures`), never otherwise."""
    problems = []
    try:
        for event in outcome.events:
            validate_event_shape(event)
        outcome.assert_shape()
    except (StreamShapeError, AssertionError) as error:
        return [str(error)]
    retries = outcome.of_type("upstream_retry")
    if [r["attempt"] for r in retries] != list(range(1, len(retries) + 1)):
        problems.append(f"retry attempts {[r['attempt'] for r in retries]} are not 1..n")
    reasons = [r["reason"] for r in retries] + ([outcome.details] if outcome.code != "OK" else [])
    if plan.fault["kind"] != "stall":
        fault_failures = sum(not is_timeout(reason) for reason in reasons)
        if fault_failures > plan.failing_attempts:
            problems.append(f"{fault_failures} failed attempts that were not timeouts, for {plan.failing_attempts} "
                            f"planned: {reasons}")
    fires_every_attempt = plan.fault["kind"] == "http_status" or plan.fault["after_events"] <= 3
    if outcome.code == "OK":
        if plan.exhausts_budget and fires_every_attempt:
            problems.append(f"OK, but every one of the {MAX_RETRIES + 1} attempts should have failed")
        if outcome.text != reference:
            problems.append(f"text differs from the fault-free run: {outcome.text!r} vs {reference!r}")
        least = plan.failing_attempts if fires_every_attempt else min(1, plan.failing_attempts)
        if len(retries) < least:
            problems.append(f"{len(retries)} retries for {plan.failing_attempts} failing attempts")
    else:
        expected = "UNAVAILABLE" if is_timeout(outcome.details) else plan.exhausted_code
        if outcome.code != expected:
            problems.append(f"status {outcome.code} ({outcome.details}), expected {expected}")
        if f"after {MAX_RETRIES + 1} attempts" not in outcome.details:
            problems.append(f"the error does not say it gave up after {MAX_RETRIES + 1} attempts: {outcome.details}")
        if len(retries) != MAX_RETRIES:
            problems.append(f"{len(retries)} retries, expected the whole budget of {MAX_RETRIES}")
    if outcome.types.count("message_start") > 1:
        problems.append("more than one message_start")
    return problems


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for_fds(pid: int, expected: int, timeout: float) -> None:
    """Polls /proc/PID/fd until it holds at most `expected` descriptors (closing is asynchronous). Fewer is no
    leak: the count taken before may include a client connection that was still closing."""
    deadline = time.monotonic() + timeout
    while (count := open_fds(pid)) > expected:
        assert time.monotonic() < deadline, (
            f"the server has {count} open descriptors {timeout:.0f}s after the run, {expected} before: "
            f"{sorted(os.readlink(f'/proc/{pid}/fd/{fd}') for fd in os.listdir(f'/proc/{pid}/fd'))}")
        time.sleep(0.05)  # poll interval, not synchronisation


def run_chaos(start_server, streams: int, max_active: int) -> None:
    plans = make_plans(SEED, streams)
    reproduce = f"(reproduce with INTEROP_CHAOS_SEED={SEED})"
    print(f"chaos: seed {SEED}, {streams} streams, --max-active {max_active}, --max-retries {MAX_RETRIES}")
    server = start_server("--max-active", str(max_active), "--max-queued", str(streams), "--queue-timeout", "10m",
                          "--max-retries", str(MAX_RETRIES), "--upstream-idle-timeout", STALL_TIMEOUT,
                          "--first-token-timeout", STALL_TIMEOUT, "--log-level", "warning")

    # The fault-free runs first: they also open whatever the server keeps open between streams.
    started = time.monotonic()
    references = asyncio.run(run_all(server.port, [plan.request(with_fault=False) for plan in plans]))
    bad_references = [(p.index, r.code, r.details) for p, r in zip(plans, references) if r.code != "OK" or not r.text]
    assert not bad_references, f"fault-free runs failed: {bad_references[:5]} {reproduce}"
    wait_idle(server.port)
    fds_before = open_fds(server.pid)

    reference_seconds, started = time.monotonic() - started, time.monotonic()
    outcomes = asyncio.run(run_all(server.port, [plan.request() for plan in plans]))
    chaos_seconds = time.monotonic() - started

    failures = []
    for plan, outcome, reference in zip(plans, outcomes, references):
        if problems := problems_of(plan, outcome, reference.text):
            failures.append(f"stream {plan.index} {plan.request()['simulation']}: {'; '.join(problems)}")
    exhausted = sum(outcome.code != "OK" for outcome in outcomes)
    queued = sum(1 for outcome in outcomes if outcome.types[:1] == ["stream_queued"])
    print(f"chaos: {streams - exhausted} streams with their fault-free text, {exhausted} clean errors after the "
          f"retry budget, {queued} queued first, {sum(len(o.of_type('upstream_retry')) for o in outcomes)} retries "
          f"(plus {sum(spurious_failures(p, o) for p, o in zip(plans, outcomes))} failed attempts beyond the plan: timeouts "
          f"of healthy attempts on a busy machine); "
          f"fault-free runs {reference_seconds:.1f} s, chaos run {chaos_seconds:.1f} s")
    assert not failures, f"{len(failures)} of {streams} streams went wrong {reproduce}:\n" + "\n".join(failures[:20])
    assert queued > 0, f"no stream was queued: raise the stream count above --max-active {max_active}"

    wait_idle(server.port, timeout=30)
    wait_for_metrics(server.port, lambda m: m.counter("sluice_streams_completed_total") == 2 * streams,
                     f"{2 * streams} completed streams")
    wait_for_fds(server.pid, fds_before, timeout=30)
    print(f"chaos: afterwards no stream active or queued, no upstream transfer open, "
          f"{open_fds(server.pid)} descriptors ({fds_before} before)")


def test_chaos_short(start_server):
    run_chaos(start_server, streams=200, max_active=32)


@pytest.mark.skipif(os.environ.get("INTEROP_CHAOS") != "full",
                    reason="the full chaos run is `make chaos` (INTEROP_CHAOS=full)")
@pytest.mark.timeout(1800)
def test_chaos_full(start_server):
    run_chaos(start_server, streams=FULL_STREAMS, max_active=64)
