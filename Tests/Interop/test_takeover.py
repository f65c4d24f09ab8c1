"""Takeover (`--store redis://…`): a stream outlives the replica that ran it. Two `sluice serve` replicas, one
`sluice simulate` and one `redis-server` of the test's own (free port, temporary directory), with a 1 s lease.

- `kill -9` of the owner mid-text: a Resume on the other replica finds the lease lapsed (or follows the log until it
  lapses), claims the stream and continues it (`upstream_retry` mode `continue`, reason `replica_lost`): every seq
  once, the text equal to a fault-free run's.
- SIGSTOP of the owner past its lease: the other replica takes over and finishes; after SIGCONT the old owner's
  writes are refused by the epoch fence, it aborts its copy (UNAVAILABLE) and the log stays whole.
- The owner is killed right after its client got an event, without waiting for anything: the log already holds it
  (delivery waits for Redis's acknowledgement).
- Redis hung (SIGSTOP): the client's events are held at most a lease, then the stream goes on marked `resumable 0`;
  with its owner dead and its lease lapsed, no replica claims it (Resume: DATA_LOSS).
- A taken-over stream keeps its caller's one cluster-wide slot, and gives it back at its end.
- `kill -9` during or after a server tool round: the round is rebuilt (or the turn that asked for it restarted).
Waits are on signals: the log in Redis, /metrics, the streams' own ends.
"""

from __future__ import annotations

import json
import signal

import pytest

import grpc

from streaming_testlib import assert_stream_shape, message_text, send_request, slow_request, wait_for_metrics
from test_sse import STREAMS, check_error, http_client, post_stream, read_events, url
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


def test_kill_9_of_the_owner_mid_text_is_continued_on_another_replica(pair, redis):
    a, b = pair
    with http_client("alpha") as client:
        uninterrupted = read_events(client, a.port, post_stream(client, a.port, send_request(seed=21, output_tokens=40)))
        stream_id = post_stream(client, a.port, slow_request(seed=21, seconds=8, output_tokens=40))
        first = read_events(client, a.port, stream_id, limit=6)
    a.expect_exit = True
    a.proc.kill()  # SIGKILL: no drain, no release of its lease
    a.proc.wait()
    # The owner delivered nothing the log did not hold already: the new owner continues after what the client has.
    assert logged(redis, stream_id)[:len(first)] == first
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
    a.signal(signal.SIGSTOP)
    try:
        rest = resume_rpc(b.port, stream_id, first[-1]["seq"])
    finally:
        a.signal(signal.SIGCONT)
    a.expect_exit = False
    whole = first + rest
    assert_stream_shape(whole, "OK")
    assert message_text(whole) == message_text(uninterrupted)
    # The old owner aborts its copy at once, by whichever of its guards runs first after waking: its job, reading what
    # the upstream sent meanwhile, stops the stream and the fence refuses its final writes; or its loop's lease timer
    # notices the stall first and it writes nothing more (which of the two depends on where SIGSTOP caught the loop).
    wait_for_metrics(a.port, lambda m: m.value("sluice_streams_completed_total", 0, status="UNAVAILABLE") == 1,
                     "the old owner's copy aborted with UNAVAILABLE")
    stall_noticed = "this replica stalled past its lease: another replica may own this stream"
    assert wait_for_metrics(a.port, lambda m: m.value("sluice_store_fenced_writes_total", 0) >= 1 or stall_noticed in a.stderr(),
                            "a fenced write, or the stall noticed before any write")
    # The log is b's alone: every seq once, nothing of a's after the takeover.
    assert logged(redis, stream_id) == whole
    assert redis.cli("HGET", f"sluice:{{{stream_id}}}:meta", "status") == "OK"


def test_a_hung_store_delays_the_client_at_most_a_lease_and_its_stream_is_never_claimed(start_server, redis, simulator,
                                                                                       monkeypatch):  # noqa: F811
    monkeypatch.setenv("SLUICE_API_KEYS", "alpha")
    a = start_server("--store", redis.url, "--replica-id", "a", "--upstream-url", simulator, "--upstream-is-simulator", *LEASE)
    wait_for_metrics(a.port, lambda m: m.value("sluice_store_up") == 1, "the store up")
    with http_client("alpha") as client:
        stream_id = post_stream(client, a.port, slow_request(seed=24, seconds=8, output_tokens=40))
        events = []
        with client.sse(url(a.port, f"{STREAMS}/{stream_id}/events")) as source:
            for sse in source:
                events.append(json.loads(sse.data))
                if len(events) == 3:
                    redis.proc.send_signal(signal.SIGSTOP)  # connected, but no acknowledgement comes
                if len(events) == 8:
                    break  # events the log never acknowledged reached the client: held a lease at most
    a.expect_exit = True
    a.proc.kill()
    a.proc.wait()
    redis.proc.send_signal(signal.SIGCONT)
    meta = f"sluice:{{{stream_id}}}:meta"
    while redis.cli("HGET", meta, "resumable") != "0":  # the mark a sent when it released its client
        pass
    while redis.cli("EXISTS", f"sluice:{{{stream_id}}}:lease") != "0":  # a's last renewal, sent before it died, lapses
        pass
    assert redis.cli("HGET", meta, "status") == "running"
    # Its owner is gone and its lease lapsed, but no replica may continue it: its client holds events the log lacks.
    b = start_server("--store", redis.url, "--replica-id", "b", "--upstream-url", simulator, "--upstream-is-simulator", *LEASE)
    wait_for_metrics(b.port, lambda m: m.value("sluice_store_up") == 1, "the store up")
    with pytest.raises(grpc.RpcError) as failure:
        resume_rpc(b.port, stream_id, events[-1]["seq"])
    assert failure.value.code() == grpc.StatusCode.DATA_LOSS, failure.value
    assert (redis.cli("HGET", meta, "owner"), redis.cli("HGET", meta, "epoch")) == ("a", "1")


def test_a_taken_over_stream_keeps_its_callers_cluster_wide_slot_and_gives_it_back(start_server, redis, simulator,
                                                                                 monkeypatch):  # noqa: F811
    monkeypatch.setenv("SLUICE_API_KEYS", "alpha")
    a, b = (start_server("--store", redis.url, "--replica-id", name, "--upstream-url", simulator, "--upstream-is-simulator",
                         "--max-active-per-key", "1", *LEASE) for name in "ab")
    for replica in (a, b):
        wait_for_metrics(replica.port, lambda m: m.value("sluice_store_up") == 1, "the store up")
    slots = "sluice:caller:{key-1}:active"
    with http_client("alpha") as client:
        stream_id = post_stream(client, a.port, slow_request(seed=25, seconds=4, output_tokens=30))
        first = read_events(client, a.port, stream_id, limit=3)
        a.expect_exit = True
        a.proc.kill()
        a.proc.wait()
        rest = []
        with client.sse(url(b.port, f"{STREAMS}/{stream_id}/events"), headers={"last-event-id": str(first[-1]["seq"])}) as source:
            for sse in source:
                rest.append(json.loads(sse.data))
                if rest[-1]["type"] == "upstream_retry":
                    # b runs the stream now, with its caller's one slot: another stream of the caller is refused.
                    assert redis.cli("ZRANGE", slots, "0", "-1") == stream_id
                    message = check_error(client.post(url(b.port, STREAMS), json=send_request(seed=26)), 429, "RESOURCE_EXHAUSTED")
                    assert "across the server's replicas" in message, message
        assert_stream_shape(first + rest, "OK")
        while redis.cli("ZCARD", slots) != "0":  # released when the stream's end reaches the store
            pass
        assert_stream_shape(read_events(client, b.port, post_stream(client, b.port, send_request(seed=26, output_tokens=3))), "OK")


@pytest.mark.parametrize("kill_at", ["tool_start", "second_message"])
def test_kill_9_of_the_owner_during_or_after_a_server_tool_round_is_continued(kill_at, start_server, redis, simulator,
                                                                             monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("SLUICE_API_KEYS", "alpha")
    root = tmp_path / "root"
    root.mkdir()
    (root / "notes.txt").write_text("takeover notes\n")
    a, b = (start_server("--store", redis.url, "--replica-id", name, "--upstream-url", simulator, "--upstream-is-simulator",
                         "--tool-root", str(root), *LEASE) for name in "ab")
    for replica in (a, b):
        wait_for_metrics(replica.port, lambda m: m.value("sluice_store_up") == 1, "the store up")

    def tool_request(seconds: float) -> dict:
        request = slow_request(seed=27, seconds=seconds, output_tokens=30,
                               tool_calls=[{"name": "read_file", "input": {"path": "notes.txt"}}])
        request["tools"] = ["read_file"]
        return request

    with http_client("alpha") as client:
        uninterrupted = read_events(client, a.port, post_stream(client, a.port, tool_request(0.3)))
        assert [e["type"] for e in uninterrupted].count("tool_complete") == 1
        stream_id = post_stream(client, a.port, tool_request(3))
        first = []
        with client.sse(url(a.port, f"{STREAMS}/{stream_id}/events")) as source:
            for sse in source:
                first.append(json.loads(sse.data))
                messages = [e for e in first if e["type"] == "message_start"]
                if kill_at == "tool_start" and first[-1]["type"] == "tool_start":
                    break
                if kill_at == "second_message" and len(messages) == 2 and first[-1]["type"] == "message_delta":
                    break
    a.expect_exit = True
    a.proc.kill()
    a.proc.wait()
    rest = resume_rpc(b.port, stream_id, first[-1]["seq"])
    whole = first + rest
    assert_stream_shape(whole, "OK")  # every seq exactly once, in order
    assert message_text(whole) == message_text(uninterrupted)
    retries = [(e["reason"], e["mode"]) for e in rest if e["type"] == "upstream_retry"]
    if kill_at == "second_message":
        # The round is rebuilt from the log: the answer's turn goes on where it was, the tool is not run again.
        assert retries == [("replica_lost", "continue")], retries
        assert [e["type"] for e in whole].count("tool_start") == 1
    else:
        # Died in the round (or just after it, before b read the log): the turn that asked for the tool starts again
        # and runs it again, or the answer's turn goes on (transparently when its message_start was all it logged).
        assert retries in ([("replica_lost", "restart")], [("replica_lost", "continue")],
                           [("replica_lost", "transparent")]), retries
    assert [e["type"] for e in whole].count("tool_complete") >= 1
    assert logged(redis, stream_id) == whole
