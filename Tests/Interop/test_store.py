"""The shared stream log on Redis (`--store redis://…`): three `sluice serve` replicas against one
`sluice simulate` and one `redis-server` of the test's own (free port, temporary directory).

A stream started on replica A is resumed (SSE Last-Event-ID, grpcio Resume) on B and C with every seq
once and the text of an uninterrupted run; Cancel on B reaches A; another caller's stream is a 404 on
every replica; Redis killed mid-stream leaves A's attached client whole, sluice_store_up falls to 0
and recovers; keys are hash-tagged and expire after --retention; the log refuses a second writer.
Waits are on signals: log lines, ports, /metrics.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest

from sluice_testlib import IO_TIMEOUT
from streaming_testlib import (
    CHANNEL_OPTIONS,
    RESUME,
    SluiceClient,
    assert_stream_shape,
    message_text,
    send_request,
    slow_request,
    to_json,
    wait_for_metrics,
)
from test_sse import STREAMS, check_error, http_client, post_stream, read_events, url

RETENTION_MS = 20_000


def port_outside_the_ephemeral_range() -> int:
    """A free port the kernel will not hand out on its own: `start` after `kill` reuses the port, and meanwhile a
    `--port 0` server or an outgoing connection could otherwise take it."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(n) for n in f.read().split())
    candidates = [p for p in range(10_000, 65_536) if not low <= p <= high]
    for port in random.sample(candidates, 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port outside the kernel's ephemeral range")


class RedisServer:
    """`redis-server` on a free port in `directory`; `kill` is a crash (SIGKILL), `start` brings it back."""

    def __init__(self, directory):
        self.directory = directory
        self.port = port_outside_the_ephemeral_range()
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        # Redis logs to a file, not to a pipe nobody reads after start-up; the log says why it stopped, if it did.
        self.log = self.directory / "redis.log"
        self.log.write_text("")
        self.killed = False
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "no", "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + IO_TIMEOUT
        while "Ready to accept connections" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited with {self.proc.returncode}:\n{self.log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server was not ready in {IO_TIMEOUT} s:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.01)

    def kill(self) -> None:
        if not self.killed and self.proc.poll() is not None:
            # Only the tests stop Redis: say why it stopped on its own (the failing test's output shows this).
            print(f"redis-server had exited with {self.proc.returncode}; its log:\n{self.log.read_text(errors='replace')}",
                  file=sys.stderr)
        self.killed = True
        self.proc.kill()
        self.proc.wait(timeout=IO_TIMEOUT)

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True,
                              check=True, timeout=IO_TIMEOUT).stdout.strip()


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.kill()


@pytest.fixture
def simulator(sluice_bin, tmp_path):
    with open(tmp_path / "simulator.stderr", "wb") as stderr:
        proc = subprocess.Popen([sluice_bin, "simulate", "--port", "0"], stdout=subprocess.PIPE, stderr=stderr, text=True)
    line = proc.stdout.readline().strip()
    prefix = "sluice simulator listening on "
    assert line.startswith(prefix), line
    yield "http://" + line[len(prefix):]
    proc.kill()
    proc.wait(timeout=IO_TIMEOUT)


@pytest.fixture
def replicas(start_server, redis, simulator, monkeypatch):
    """Replicas a, b and c sharing `redis`, callers `alpha` and `beta`."""
    monkeypatch.setenv("SLUICE_API_KEYS", "alpha, beta")
    return [
        start_server("--store", redis.url, "--replica-id", name, "--upstream-url", simulator, "--upstream-is-simulator",
                     "--retention", f"{RETENTION_MS}ms")
        for name in "abc"
    ]


def resume_rpc(port: int, stream_id: str, after_seq: int, token: str = "alpha") -> list[dict]:
    """Resume through grpcio: every event after `after_seq`."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        resume = channel.unary_stream(RESUME, request_serializer=to_json, response_deserializer=json.loads)
        return list(resume({"stream_id": stream_id, "after_seq": after_seq}, timeout=IO_TIMEOUT,
                           metadata=[("authorization", f"Bearer {token}")]))


def test_a_stream_started_on_a_is_resumed_on_b_then_c_with_every_seq_once(replicas):
    a, b, c = replicas
    with http_client("alpha") as client:
        uninterrupted = read_events(client, a.port, post_stream(client, a.port, send_request(seed=5, output_tokens=30)))
        stream_id = post_stream(client, a.port, slow_request(seed=5, seconds=3, output_tokens=30))
        first = read_events(client, a.port, stream_id, limit=4)
        # B: an EventSource reconnecting with Last-Event-ID replays from the log, then follows it live; it leaves
        # after 5 more (a disconnect only detaches, as on the owner).
        second = read_events(client, b.port, stream_id, limit=5, headers={"last-event-id": str(first[-1]["seq"])})
    # C: grpcio Resume to the end.
    rest = resume_rpc(c.port, stream_id, second[-1]["seq"])
    whole = first + second + rest
    assert_stream_shape(whole, "OK")  # every seq exactly once, in order
    assert message_text(whole) == message_text(uninterrupted)


def test_a_finished_stream_replays_on_every_replica_and_another_callers_is_404(replicas):
    a, b, c = replicas
    with http_client("alpha") as client:
        stream_id = post_stream(client, a.port, send_request(seed=6, output_tokens=10))
        whole = read_events(client, a.port, stream_id)
        for replica in (b, c):
            assert read_events(client, replica.port, stream_id, params={"after_seq": 3}) == whole[3:]
            response = client.get(url(replica.port, f"{STREAMS}/{stream_id}/events"), params={"after_seq": whole[-1]["seq"]})
            assert response.status_code == 204
    with http_client("beta") as stranger:
        for replica in replicas:
            check_error(stranger.get(url(replica.port, f"{STREAMS}/{stream_id}/events")), 404, "NOT_FOUND")
            check_error(stranger.delete(url(replica.port, f"{STREAMS}/{stream_id}")), 404, "NOT_FOUND")
    with pytest.raises(grpc.RpcError) as failure:
        resume_rpc(b.port, stream_id, 0, token="beta")
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


def test_cancel_on_b_reaches_the_stream_running_on_a(replicas):
    a, b, _ = replicas
    with http_client("alpha") as client, http_client("alpha") as canceller:
        stream_id = post_stream(client, a.port, slow_request(seed=7, seconds=20))
        events = []
        with client.sse(url(a.port, f"{STREAMS}/{stream_id}/events")) as source:
            for sse in source:
                events.append(json.loads(sse.data))
                if len(events) == 2:
                    response = canceller.delete(url(b.port, f"{STREAMS}/{stream_id}"))
                    assert response.status_code == 200, response.text
    assert_stream_shape(events, "CANCELLED")
    assert f"DELETE {STREAMS}/{stream_id}" in events[-1]["error"], events[-1]


def test_keys_are_hash_tagged_expire_after_the_retention_and_refuse_a_second_writer(replicas, redis):
    a = replicas[0]
    with http_client("alpha") as client:
        stream_id = post_stream(client, a.port, send_request(seed=8, output_tokens=5))
        whole = read_events(client, a.port, stream_id)
    wait_for_metrics(a.port, lambda m: m.value("sluice_store_up") == 1, "the store up")
    prefix = f"sluice:{{{stream_id}}}"
    # The finish is written after the last event: wait for it (a signal, not a sleep).
    meta = {}
    for _ in range(1000):
        fields = redis.cli("HGETALL", f"{prefix}:meta").splitlines()
        meta = dict(zip(fields[::2], fields[1::2]))
        if meta.get("status") == "OK":
            break
    assert meta["status"] == "OK" and meta["owner"] == "a" and meta["caller"] == "key-1", meta
    assert int(meta["last_seq"]) == whole[-1]["seq"]
    assert json.loads(meta["request"])["simulation"]["seed"] == 8
    assert sorted(redis.cli("KEYS", f"{prefix}:*").splitlines()) == [f"{prefix}:log", f"{prefix}:meta"]  # lease deleted
    for key in ("log", "meta"):
        assert 0 < int(redis.cli("PTTL", f"{prefix}:{key}")) <= RETENTION_MS
    assert int(redis.cli("XLEN", f"{prefix}:log")) == len(whole)
    refused = redis.cli("XADD", f"{prefix}:log", "0-1", "type", "message_delta", "frame", "{}")
    assert "equal or smaller" in refused, refused


def test_redis_killed_mid_stream_loses_nothing_for_the_attached_client_and_recovers(replicas, redis):
    a, b, _ = replicas
    with http_client("alpha") as client:
        uninterrupted = read_events(client, a.port, post_stream(client, a.port, send_request(seed=9, output_tokens=30)))
        wait_for_metrics(a.port, lambda m: m.value("sluice_store_up") == 1, "the store up")
        stream_id = post_stream(client, a.port, slow_request(seed=9, seconds=2, output_tokens=30))
        events = []
        with client.sse(url(a.port, f"{STREAMS}/{stream_id}/events")) as source:
            for sse in source:
                events.append(json.loads(sse.data))
                if len(events) == 3:
                    redis.kill()
                    wait_for_metrics(a.port, lambda m: m.value("sluice_store_up") == 0, "sluice_store_up 0")
        assert_stream_shape(events, "OK")
        assert message_text(events) == message_text(uninterrupted)
        # Another replica cannot reach the store: a clear UNAVAILABLE, not a 404.
        check_error(client.get(url(b.port, f"{STREAMS}/{stream_id}/events")), 503, "UNAVAILABLE")

        redis.start()
        for replica in (a, b):
            wait_for_metrics(replica.port, lambda m: m.value("sluice_store_up") == 1, "sluice_store_up back at 1")
        stream_id = post_stream(client, a.port, send_request(seed=10, output_tokens=8))
        whole = read_events(client, a.port, stream_id)
        # B follows the log until the stream's end is written, however late that lands.
        assert read_events(client, b.port, stream_id, params={"after_seq": 2}) == whole[2:]


def test_a_callers_limit_holds_across_replicas(start_server, redis, simulator, monkeypatch):
    monkeypatch.setenv("SLUICE_API_KEYS", "alpha, beta")
    a, b = (start_server("--store", redis.url, "--replica-id", name, "--upstream-url", simulator, "--upstream-is-simulator",
                         "--max-active-per-key", "1") for name in "ab")
    for replica in (a, b):
        wait_for_metrics(replica.port, lambda m: m.value("sluice_store_up") == 1, "the store up")
    with http_client("alpha") as alpha, http_client("beta") as beta:
        running = post_stream(alpha, a.port, slow_request(seed=11, seconds=20))
        message = check_error(alpha.post(url(b.port, STREAMS), json=send_request(seed=12)), 429, "RESOURCE_EXHAUSTED")
        assert "--max-active-per-key" in message, message
        # Another caller is not held back by alpha's limit.
        read_events(beta, b.port, post_stream(beta, b.port, send_request(seed=13, output_tokens=3)))
        assert alpha.delete(url(a.port, f"{STREAMS}/{running}")).status_code == 200
        # The slot is released when the stream's end reaches the store.
        while redis.cli("ZCARD", "sluice:caller:{key-1}:active") != "0":
            pass
        events = read_events(alpha, b.port, post_stream(alpha, b.port, send_request(seed=12, output_tokens=3)))
    assert_stream_shape(events, "OK")


def test_readyz_waits_for_the_store_at_start_up(start_server, tmp_path):
    redis = RedisServer(tmp_path)
    redis.kill()
    server = start_server("--store", redis.url)
    with http_client() as client:
        response = client.get(url(server.port, "/readyz"))
        assert (response.status_code, response.text) == (503, "store unreachable\n")
        with SluiceClient(server.port) as grpc_client:
            assert grpc_client.health() == {"status": "NOT_SERVING"}
        # Local streams work without the store.
        assert_stream_shape(read_events(client, server.port, post_stream(client, server.port, send_request(seed=14, output_tokens=3))), "OK")
        redis.start()
        try:
            wait_for_metrics(server.port, lambda m: m.value("sluice_store_up") == 1, "sluice_store_up 1")
            response = client.get(url(server.port, "/readyz"))
            assert (response.status_code, response.text) == (200, "ready\n")
        finally:
            redis.kill()
        wait_for_metrics(server.port, lambda m: m.value("sluice_store_up") == 0, "sluice_store_up 0")
        # Down after start-up: still ready, its own streams go on.
        assert client.get(url(server.port, "/readyz")).status_code == 200


def test_remote_readers_are_notified_over_a_fixed_number_of_redis_connections(start_server, redis, simulator, monkeypatch):
    """Eight readers on B follow two streams A runs: B is woken by A's pub/sub notifications over its two
    connections per event loop (one for commands, one subscriber), subscribes once per stream whatever the
    readers, and unsubscribes when they are done; each reader gets the whole stream."""
    monkeypatch.setenv("SLUICE_API_KEYS", "alpha")
    a, b = (start_server("--store", redis.url, "--replica-id", name, "--upstream-url", simulator, "--upstream-is-simulator",
                         "--event-loops", "1") for name in "ab")
    for replica in (a, b):
        wait_for_metrics(replica.port, lambda m: m.value("sluice_store_up") == 1, "the store up")

    def clients() -> int:
        """Redis clients, not counting this redis-cli."""
        info = dict(line.split(":", 1) for line in redis.cli("INFO", "clients").splitlines() if ":" in line)
        return int(info["connected_clients"]) - 1

    def subscribers(stream_id: str) -> int:
        return int(redis.cli("PUBSUB", "NUMSUB", f"sluice:{{{stream_id}}}:appended").splitlines()[-1])

    while clients() != 2 * 2:  # two replicas with one loop each; their subscriber connections come up just after
        pass
    readers_per_stream = 4
    with http_client("alpha") as client:
        stream_ids = [post_stream(client, a.port, slow_request(seed=20 + i, seconds=6, output_tokens=30)) for i in range(2)]
        results: dict[tuple[str, int], list[dict]] = {}

        def follow(stream_id: str, index: int) -> None:
            with http_client("alpha") as reader:
                results[stream_id, index] = read_events(reader, b.port, stream_id, params={"after_seq": 0})

        threads = [threading.Thread(target=follow, args=(stream_id, i)) for stream_id in stream_ids
                   for i in range(readers_per_stream)]
        for thread in threads:
            thread.start()
        wait_for_metrics(b.port, lambda m: m.value("sluice_store_remote_readers", 0) == len(threads), "every reader following")
        # A follower counts itself before its SUBSCRIBE is confirmed.
        while 0 in [subscribers(stream_id) for stream_id in stream_ids]:
            pass
        assert [subscribers(stream_id) for stream_id in stream_ids] == [1, 1]
        assert clients() == 2 * 2
        owners_view = {stream_id: read_events(client, a.port, stream_id) for stream_id in stream_ids}
        for thread in threads:
            thread.join(IO_TIMEOUT)
    for (stream_id, _), events in results.items():
        assert events == owners_view[stream_id]
        assert_stream_shape(events, "OK")
    assert len(results) == len(threads)
    for stream_id in stream_ids:
        while subscribers(stream_id) != 0:  # unsubscribed once its last reader is done (pytest-timeout bounds it)
            pass
    assert clients() == 2 * 2
