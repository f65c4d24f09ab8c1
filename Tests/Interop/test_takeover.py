"""Takeover (`--store redis://…`): a stream outlives the replica that ran it. Two `sluice serve` replicas, one
`sluice simulate` and one `redis-server` of the test's own (free port, temporary directory), with a 1 s lease.

- `kill -9` of the owner mid-text: a Resume on the other replica finds the lease lapsed (or follows the log until it
  lapses), claims the stream and continues it (`upstream_retry` mode `continue`, reason `replica_lost`): every seq
  once, the text equal to a fault-free run's.
- SIGSTOP of the owner past its lease: the other replica takes over and finishes; after SIGCONT the old owner's
  writes are refused by the epoch fence, it aborts its copy (UNAVAILABLE) and the log stays whole.
Waits are on signals: the log in Redis, /metrics, the streams' own ends.
"""

from __future__ import annotations

import json
import signal

import pytest

from streaming_testlib import assert_stream_shape, message_text, send_request, slow_request, wait_for_metrics
from test_sse import http_client, post_stream, read_events
from test_store import RedisServer, redis, resume_rpc, simulator  # noqa: F401  (fixtures)

LEASE = ["--lease-ttl", "1s", "--lease-renew", "200ms"]


@pytest.fixture
def pair(start_server, redis, simulator, monkeypatch):  # noqa: F811
    """Replicas a and b sharing `redis`, caller `alpha`."""
    monkeypatch.setenv("SLUICE_API_KEYS", "alpha")
    replicas = [
        start_server("--store", redis.url, "--replica-id", name, "--upstream-url", simulator, "--upstream-is-simulator", *LEASE)
        for name in "ab"
    ]
    for replica in replicas:
        wait_for_metrics(replica.port, lambda m: m.value("sluice_store_up") == 1, "the store up")
    return replicas


def logged(redis: RedisServer, stream_id: str) -> list[dict]:
    """The stream's events as the shared log holds them."""
    # redis-cli's raw output: per entry its id, then `type`, the type, `frame`, the frame (one JSON line).
    lines = redis.cli("XRANGE", f"sluice:{{{stream_id}}}:log", "-", "+").splitlines()
    return [json.loads(lines[index + 4]) for index in range(0, len(lines), 5)]


def wait_until_logged(redis: RedisServer, stream_id: str, seq: int) -> None:
    """Until the owner's write of `seq` reached the log (what a takeover continues from)."""
    while int(redis.cli("XLEN", f"sluice:{{{stream_id}}}:log")) < seq:
        pass


def test_kill_9_of_the_owner_mid_text_is_continued_on_another_replica(pair, redis):
    a, b = pair
    with http_client("alpha") as client:
        uninterrupted = read_events(client, a.port, post_stream(client, a.port, send_request(seed=21, output_tokens=40)))
        stream_id = post_stream(client, a.port, slow_request(seed=21, seconds=8, output_tokens=40))
        first = read_events(client, a.port, stream_id, limit=6)
    wait_until_logged(redis, stream_id, first[-1]["seq"])
    a.expect_exit = True
    a.proc.kill()  # SIGKILL: no drain, no release of its lease
    a.proc.wait()
    rest = resume_rpc(b.port, stream_id, first[-1]["seq"])
    whole = first + rest
    assert_stream_shape(whole, "OK")  # every seq exactly once, in order
    assert message_text(whole) == message_text(uninterrupted)
    retries = [event for event in rest if event["type"] == "upstream_retry"]
    assert [(r["reason"], r["mode"]) for r in retries] == [("replica_lost", "continue")], retries
    assert logged(redis, stream_id) == whole
    meta = redis.cli("HGET", f"sluice:{{{stream_id}}}:meta", "owner"), redis.cli("HGET", f"sluice:{{{stream_id}}}:meta", "epoch")
    assert meta == ("b", "2"), meta
    assert wait_for_metrics(b.port, lambda m: m.value("sluice_streams_taken_over_total", 0) == 1, "one takeover")


def test_a_stream_nobody_reads_is_finished_by_a_sweeper_after_kill_9_and_read_whole_later(pair, redis):
    a, b = pair
    with http_client("alpha") as client:
        uninterrupted = read_events(client, a.port, post_stream(client, a.port, send_request(seed=23, output_tokens=40)))
        stream_id = post_stream(client, a.port, slow_request(seed=23, seconds=6, output_tokens=40))
        first = read_events(client, a.port, stream_id, limit=5)  # then the client goes away
    wait_until_logged(redis, stream_id, first[-1]["seq"])
    a.expect_exit = True
    a.proc.kill()
    a.proc.wait()
    # Nobody attaches: b's sweeper finds the lapsed lease, claims the stream and runs it to the end.
    wait_for_metrics(b.port, lambda m: m.value("sluice_streams_taken_over_total", 0) == 1, "b's sweeper took the stream over")
    wait_for_metrics(b.port, lambda m: m.value("sluice_streams_completed_total", 0, status="OK") == 1, "the stream finished on b")
    whole = resume_rpc(b.port, stream_id, 0)
    assert_stream_shape(whole, "OK")
    assert whole[:5] == first
    assert message_text(whole) == message_text(uninterrupted)
    assert [(e["reason"], e["mode"]) for e in whole if e["type"] == "upstream_retry"] == [("replica_lost", "continue")]
    assert redis.cli("ZSCORE", "sluice:running", stream_id) == ""  # the sweepers' index forgets it


def test_a_paused_owner_that_wakes_after_the_takeover_emits_nothing_and_aborts(pair, redis):
    a, b = pair
    with http_client("alpha") as client:
        uninterrupted = read_events(client, a.port, post_stream(client, a.port, send_request(seed=22, output_tokens=40)))
        stream_id = post_stream(client, a.port, slow_request(seed=22, seconds=8, output_tokens=40))
        first = read_events(client, a.port, stream_id, limit=5)
    wait_until_logged(redis, stream_id, first[-1]["seq"])
    a.signal(signal.SIGSTOP)
    try:
        rest = resume_rpc(b.port, stream_id, first[-1]["seq"])
    finally:
        a.signal(signal.SIGCONT)
    a.expect_exit = False
    whole = first + rest
    assert_stream_shape(whole, "OK")
    assert message_text(whole) == message_text(uninterrupted)
    # The old owner's first write or renewal after waking is refused by the fence: it aborts its copy at once.
    wait_for_metrics(a.port, lambda m: m.value("sluice_streams_completed_total", 0, status="UNAVAILABLE") == 1,
                     "the old owner's copy aborted with UNAVAILABLE")
    assert wait_for_metrics(a.port, lambda m: m.value("sluice_store_fenced_writes_total", 0) >= 1, "a fenced write")
    # The log is b's alone: every seq once, nothing of a's after the takeover.
    assert logged(redis, stream_id) == whole
    assert redis.cli("HGET", f"sluice:{{{stream_id}}}:meta", "status") == "OK"
