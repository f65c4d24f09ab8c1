"""Hostile HTTP/2 clients: each misbehaving connection is cut off with GOAWAY or a close, the
server's memory stays under a stated bound meanwhile, and a well-behaved client keeps being served.

For each attack the well-behaved call latency before, during (a separate process calling in a loop)
and after is printed, with the server's RSS peak (pytest -s shows them). Sizes: HOSTILE_SCALE
`short` (default, `make test`) or `full` (`make hostile`)."""
import multiprocessing
import os
import resource
import socket
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame

from sluice_testlib import GRPC_OK, IO_TIMEOUT, SYNTHETIC, FrameClient, json_envelope

SIZES = {
    "short": dict(
        rapid_reset_streams=20_000, flood_connections=1, idle_connections=2_000, idle_timeout="2s",
        oversized_header_streams=200, stalled_connections=1, stalled_streams=1_000, stall_idle_timeout_s=3,
    ),
    "full": dict(
        rapid_reset_streams=100_000, flood_connections=50, idle_connections=10_000, idle_timeout="5s",
        oversized_header_streams=10_000, stalled_connections=4, stalled_streams=1_000, stall_idle_timeout_s=30,
    ),
}
SCALE = os.environ.get("HOSTILE_SCALE", "short")
if SCALE not in SIZES:
    raise RuntimeError(f"HOSTILE_SCALE must be one of {sorted(SIZES)}, not {SCALE!r}")
SIZE = SIZES[SCALE]

RSS_BOUND_KIB = 200 * 1024  # the server stays under 200 MiB through the attacks that are cut off
STREAM_QUEUE_KIB = 64  # HTTP2ServerConfiguration.Limits.streamQueueBytes
IDLE_CONNECTION_KIB = 20  # an nghttp2 session and socket buffers: about 14 KiB measured


def good_call_ms(port: int) -> float:
    """One well-behaved call on a fresh connection; its duration in ms."""
    started = time.monotonic()
    with FrameClient(port) as client:
        result = client.call(SYNTHETIC, json_envelope({"frames": 3}))
    assert result.grpc_status == GRPC_OK, result.grpc_message
    assert len(result.messages) == 3
    return (time.monotonic() - started) * 1000


def _probe(port: int, stop, results) -> None:
    latencies, errors = [], []
    while True:
        try:
            latencies.append(good_call_ms(port))
        except Exception as error:  # reported to the test, which fails on it
            errors.append(repr(error))
        if stop.wait(0.05):  # pacing: the probe should measure the attack, not add to it
            break
    results.put((latencies, errors))


class Attack:
    """Measures one attack: the well-behaved latency before, during and after, and the RSS peak."""

    def __init__(self, server, name: str):
        self.server, self.name = server, name
        self.before_ms = good_call_ms(server.port)
        self.during_ms: list[float] = []
        self.rss_peak_kib = server.rss_kib()

    @contextmanager
    def running(self):
        """While the block runs, another process makes a well-behaved call every 50 ms and the
        server's RSS is sampled; at least one of those calls must succeed, and none may fail."""
        context = multiprocessing.get_context("fork")
        stop, results = context.Event(), context.Queue()
        probe = context.Process(target=_probe, args=(self.server.port, stop, results))
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.05):
                if self.server.proc.poll() is None:
                    self.rss_peak_kib = max(self.rss_peak_kib, self.server.rss_kib())

        sampler = threading.Thread(target=sample)
        probe.start()
        sampler.start()
        try:
            yield self
        finally:
            stop.set()
            sampling.set()
            sampler.join()
            latencies, errors = results.get(timeout=2 * IO_TIMEOUT)
            probe.join()
        assert not errors, f"well-behaved calls failed during {self.name}: {errors[:3]}"
        assert latencies, f"no well-behaved call completed during {self.name}"
        self.during_ms = latencies

    def survived(self, rss_bound_kib: int = RSS_BOUND_KIB) -> None:
        assert self.server.proc.poll() is None, f"the server died under {self.name}"
        self.rss_peak_kib = max(self.rss_peak_kib, self.server.rss_kib())
        assert self.rss_peak_kib < rss_bound_kib, f"RSS peak {self.rss_peak_kib} KiB under {self.name}, bound {rss_bound_kib} KiB"
        after = good_call_ms(self.server.port)
        during = sorted(self.during_ms)
        during_text = f"p50 {during[len(during) // 2]:.1f} max {during[-1]:.1f} ms ({len(during)} calls)" if during else "not measured"
        print(f"\n{self.name} [{SCALE}]: well-behaved call before {self.before_ms:.1f} ms, during {during_text}, "
              f"after {after:.1f} ms; server RSS peak {self.rss_peak_kib / 1024:.0f} MiB")


def send_until_cut(client: FrameClient, batches, limit: int) -> int:
    """Sends batches of frames until `limit` batches are out or the server closes the connection;
    returns how many went out."""
    sent = 0
    try:
        for batch in batches:
            if sent >= limit:
                break
            client.send(*batch)
            sent += 1
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def read_to_eof(sock: socket.socket) -> None:
    sock.settimeout(IO_TIMEOUT)
    while sock.recv(65536):
        pass


def request_headers(client: FrameClient, stream_id: int, end_headers: bool = True) -> HeadersFrame:
    block = client.encoder.encode(client.request_headers(SYNTHETIC))
    return HeadersFrame(stream_id, data=block, flags=["END_HEADERS"] if end_headers else [])


def test_rapid_reset_is_cut_off(server):
    """Opened-and-reset streams, reconnecting after each cut until the total is sent: every
    connection gets GOAWAY (nghttp2's reset rate limit: a burst of 1,000, then 33 a second)."""
    total = SIZE["rapid_reset_streams"]
    attack = Attack(server, f"rapid reset ({total:,} streams)")
    sent = connections = 0
    with attack.running():
        while sent < total:
            with FrameClient(server.port) as client:
                batches = ((request_headers(client, s), RstStreamFrame(s, error_code=8)) for s in range(1, 2**31, 2))
                sent_here = send_until_cut(client, batches, 20_000)
                client.wait_eof()
                assert client.goaways, f"no GOAWAY after {sent_here:,} opened-and-reset streams"
            sent += sent_here
            connections += 1
    attack.survived()
    print(f"rapid reset: {sent:,} streams on {connections} connections, each cut off")


def test_continuation_flood_is_cut_off(server):
    attack = Attack(server, f"CONTINUATION flood ({SIZE['flood_connections']} connections)")
    with attack.running():
        for _ in range(SIZE["flood_connections"]):
            with FrameClient(server.port) as client:
                def batches():
                    yield (request_headers(client, 1, end_headers=False),)
                    while True:
                        yield (ContinuationFrame(1, data=b""),)
                send_until_cut(client, batches(), 100_000)
                client.wait_eof()
                assert client.goaways, "no GOAWAY for a CONTINUATION flood"
    attack.survived()


@pytest.mark.parametrize("flood", ["settings", "ping"])
def test_control_frame_floods_from_a_client_that_does_not_read(server, flood):
    """A client that sends SETTINGS or PINGs and never reads the ACKs: the server must not queue
    unbounded replies (nghttp2's max_outbound_ack) and must close the connection."""
    attack = Attack(server, f"{flood} flood ({SIZE['flood_connections']} connections)")
    frame = SettingsFrame(0, settings={4: 65535}) if flood == "settings" else PingFrame(0, opaque_data=b"12345678")
    payload = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize() + frame.serialize() * 2000
    with attack.running():
        for _ in range(SIZE["flood_connections"]):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            closed = False
            try:
                for _ in range(100):
                    sock.sendall(payload)
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                closed = True
            finally:
                sock.close()
            assert closed, f"the server kept accepting a {flood} flood of 200,000 frames"
    attack.survived()


@contextmanager
def descriptor_limit_raised():
    """The idle connections need one descriptor each in this process too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_slowloris_preface_and_many_idle_connections(start_server):
    server = start_server("--idle-timeout", SIZE["idle_timeout"])
    with descriptor_limit_raised() as limit:
        count = min(SIZE["idle_connections"], limit - 500)
        attack = Attack(server, f"slowloris + {count:,} idle connections")
        rss_bound_kib = server.rss_kib() + count * IDLE_CONNECTION_KIB + 20 * 1024
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT)
        idle = []
        try:
            with attack.running():
                idle += [socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT) for _ in range(count)]
                for byte in b"PRI * HTTP/2.0\r\n":
                    slow.send(bytes([byte]))
                    assert server.proc.poll() is None
            attack.survived(rss_bound_kib)
            # The idle timeout closes them all, the slow one included (a socket timeout fails the test).
            for sock in [slow] + idle[:50]:
                read_to_eof(sock)
        finally:
            slow.close()
            for sock in idle:
                sock.close()


SETTINGS_MAX_HEADER_LIST_SIZE = 0x6


def test_header_lists_over_the_limit_are_refused_and_the_connection_kept(server):
    """Streams whose header list is over SETTINGS_MAX_HEADER_LIST_SIZE, alternately one 20 KB literal
    and an HPACK bomb (a 4 KB header indexed once, then referenced 100 times per stream: 400 KB
    decoded from about 100 bytes on the wire). Each is refused with RST_STREAM before any response,
    and the connection keeps serving."""
    total = SIZE["oversized_header_streams"]
    attack = Attack(server, f"header lists over the limit ({total:,} streams)")
    per_connection = 500
    with attack.running():
        for first in range(0, total, per_connection):
            with FrameClient(server.port, huffman=False) as client:
                limit = client.server_settings[SETTINGS_MAX_HEADER_LIST_SIZE]
                bomb = [("x-bomb", "b" * 4000)] * 100
                literal = [("x-big", "l" * 20_000)]
                assert all(sum(len(n) + len(v) + 32 for n, v in headers) > limit for headers in (bomb, literal))
                stream_ids = [client.start(SYNTHETIC, body=None, headers=bomb if index % 2 else literal)
                              for index in range(min(per_connection, total - first))]
                client.wait_for(lambda: all(client.streams[s].closed for s in stream_ids))
                for stream_id in stream_ids:
                    stream = client.streams[stream_id]
                    assert stream.reset_code is not None and stream.header_blocks == [], (stream_id, stream)
                assert client.goaways == []
                result = client.call(SYNTHETIC, json_envelope({"frames": 2}))
                assert result.grpc_status == GRPC_OK and len(result.messages) == 2
    attack.survived()


SETTINGS_INITIAL_WINDOW_SIZE = 0x4
ENHANCE_YOUR_CALM = 0xB


def test_readers_that_never_open_their_window_are_held_to_their_queues_then_closed(start_server):
    """Clients that open streams with INITIAL_WINDOW_SIZE 0 and never send WINDOW_UPDATE, each stream
    asking for 1 GiB. What the server does: each stream's handler suspends once its 64 KiB queue is
    full, so memory grows by at most streams x (64 KiB + one message); other clients keep being
    served; and once the responses have waited on the window for the idle timeout, the connection
    is closed with GOAWAY ENHANCE_YOUR_CALM, which ends the suspended handlers."""
    idle_timeout = SIZE["stall_idle_timeout_s"]
    server = start_server("--idle-timeout", f"{idle_timeout}s")
    connections, per_connection = SIZE["stalled_connections"], SIZE["stalled_streams"]
    streams = connections * per_connection
    attack = Attack(server, f"{streams:,} never-read streams on {connections} connection(s)")
    baseline = server.rss_kib()
    message_kib = 1
    bound = baseline + streams * (STREAM_QUEUE_KIB + message_kib) * 5 // 4 + 20 * 1024
    request = json_envelope({"frames": 1_000_000, "size": message_kib * 1024})
    stalled: list[FrameClient] = []
    try:
        with attack.running():
            for _ in range(connections):
                client = FrameClient(server.port, settings={SETTINGS_INITIAL_WINDOW_SIZE: 0}, auto_window_update=False)
                stalled.append(client)
                stream_ids = [client.start(SYNTHETIC, request) for _ in range(per_connection)]
                # Response HEADERS mean the handler is producing; no DATA fits in a zero window.
                client.wait_for(lambda: all(client.streams[s].header_blocks for s in stream_ids), timeout=6 * IO_TIMEOUT)
            for client in stalled:
                client.wait_eof(timeout=idle_timeout + IO_TIMEOUT)
        for client in stalled:
            assert [goaway.error_code for goaway in client.goaways] == [ENHANCE_YOUR_CALM]
            assert all(stream.data == b"" for stream in client.streams.values())
        attack.survived(rss_bound_kib=bound)
        print(f"never-read streams: RSS grew {(attack.rss_peak_kib - baseline) / 1024:.0f} MiB "
              f"({(attack.rss_peak_kib - baseline) / streams:.0f} KiB a stream; bound {(bound - baseline) // 1024} MiB)")
    finally:
        for client in stalled:
            client.close()


def test_a_slow_reader_that_keeps_opening_its_window_is_not_cut(start_server):
    """The stall rule must not cut a client that reads slowly: the server waits on its 4 KiB window
    nearly all the time, but a WINDOW_UPDATE comes every 300 ms, for about three idle timeouts."""
    server = start_server("--idle-timeout", "1s")
    with FrameClient(server.port, settings={SETTINGS_INITIAL_WINDOW_SIZE: 4096}, auto_window_update=False) as client:
        stream_id = client.start(SYNTHETIC, json_envelope({"frames": 40, "size": 1024}))
        stream = client.streams[stream_id]
        window = 4096
        while True:
            client.wait_for(lambda: len(stream.data) == window or stream.closed)
            if stream.closed:
                break
            time.sleep(0.3)  # the slow reader's pace, not a synchronisation
            client.send(WindowUpdateFrame(0, window_increment=4096), WindowUpdateFrame(stream_id, window_increment=4096))
            window += 4096
        assert stream.reset_code is None and stream.grpc_status == GRPC_OK, stream.header_blocks
        assert len(stream.messages) == 40 and client.goaways == []


def start_with_descriptor_limit(sluice_bin: str, limit: int, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sluice_bin, "serve", "--port", "0", *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
    )


def test_max_active_beyond_the_descriptor_limit_is_refused(sluice_bin):
    proc = start_with_descriptor_limit(sluice_bin, 200, "--max-active", "100")
    _, stderr = proc.communicate(timeout=IO_TIMEOUT)
    assert proc.returncode != 0
    assert "open files" in stderr and "ulimit" in stderr, stderr


def count_closed_of(port: int, connections: int) -> tuple[int, list[socket.socket]]:
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) for _ in range(connections)]
    closed = 0
    for sock in sockets:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())
        try:
            closed += sock.recv(9) == b""  # the kept ones answer with SETTINGS
        except ConnectionResetError:
            closed += 1
    return closed, sockets


def test_a_multiplexed_upstream_reserves_a_connection_per_ten_transfers_not_one_each(sluice_bin):
    # An https upstream carries 10 transfers per connection (--upstream-streams-per-connection), so --max-active 100
    # reserves 10 sockets plus, per loop, a partly filled connection, 8 kept idle and one for a fresh-connection
    # retry: 200 - 128 reserved - 30 = 42 client connections. A descriptor per transfer would refuse to start.
    proc = start_with_descriptor_limit(
        sluice_bin, 200, "--max-active", "100", "--event-loops", "2",
        "--upstream-url", "https://127.0.0.1:9", "--upstream-is-simulator")
    try:
        line = proc.stdout.readline()
        assert "127.0.0.1:" in line, line + proc.stderr.read()
        closed, sockets = count_closed_of(int(line.split("127.0.0.1:")[1].split()[0]), 100)
        assert closed == 58, f"{closed} of 100 connections were closed, expected the 58 beyond the budget of 42"
        for sock in sockets:
            sock.close()
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.communicate()


def test_connections_beyond_the_descriptor_budget_are_closed_on_arrival(sluice_bin):
    # 200 descriptors - 128 reserved - 2 for one upstream transfer on the in-process simulator = 70 connections.
    proc = start_with_descriptor_limit(sluice_bin, 200, "--max-active", "1")
    try:
        port = int(proc.stdout.readline().split("127.0.0.1:")[1].split()[0])
        closed, sockets = count_closed_of(port, 100)
        assert closed == 30, f"{closed} of 100 connections were closed, expected the 30 beyond the budget of 70"
        for sock in sockets:
            sock.close()
        assert proc.poll() is None
        good_call_ms(port)
    finally:
        proc.kill()
        proc.communicate()
