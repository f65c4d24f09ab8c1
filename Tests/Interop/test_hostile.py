"""Hostile HTTP/2 clients (short versions): each misbehaving connection is cut off with GOAWAY or a
close, the server stays up with bounded memory, and a well-behaved client measured right after still
gets its stream. The added latency for that client is printed (pytest -s shows it)."""
import resource
import socket
import subprocess
import time

import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame

from sluice_testlib import GRPC_OK, IO_TIMEOUT, SYNTHETIC, FrameClient, json_envelope

RSS_BOUND_KIB = 200 * 1024  # the server stays under 200 MiB through every attack here


def good_call_ms(port: int) -> float:
    """One well-behaved call on a fresh connection; its duration in ms."""
    started = time.monotonic()
    with FrameClient(port) as client:
        result = client.call(SYNTHETIC, json_envelope({"frames": 3}))
    assert result.grpc_status == GRPC_OK, result.grpc_message
    assert len(result.messages) == 3
    return (time.monotonic() - started) * 1000


def send_until_cut(client: FrameClient, frames, limit: int) -> None:
    """Sends frames until `limit` are out or the server closes the connection."""
    try:
        for index, frame in enumerate(frames):
            if index >= limit:
                return
            client.send(frame)
    except (BrokenPipeError, ConnectionResetError):
        pass


def assert_survived(server, baseline_ms: float, attack: str) -> None:
    assert server.proc.poll() is None, f"the server died under {attack}"
    assert server.rss_kib() < RSS_BOUND_KIB, f"RSS {server.rss_kib()} KiB after {attack}"
    after = good_call_ms(server.port)
    print(f"{attack}: well-behaved call {after:.1f} ms (baseline {baseline_ms:.1f} ms)")


def read_to_eof(sock: socket.socket) -> None:
    sock.settimeout(IO_TIMEOUT)
    while sock.recv(65536):
        pass


def request_headers(client: FrameClient, stream_id: int, end_headers: bool = True) -> HeadersFrame:
    block = client.encoder.encode(client.request_headers(SYNTHETIC))
    return HeadersFrame(stream_id, data=block, flags=["END_HEADERS"] if end_headers else [])


def test_rapid_reset_is_cut_off(server):
    baseline = good_call_ms(server.port)
    with FrameClient(server.port) as client:
        def frames():
            for stream_id in range(1, 2 * 20_000, 2):
                yield request_headers(client, stream_id)
                yield RstStreamFrame(stream_id, error_code=8)
        send_until_cut(client, frames(), 40_000)
        client.wait_eof()
        assert client.goaways, "no GOAWAY for 20,000 opened-and-reset streams"
    assert_survived(server, baseline, "rapid reset")


def test_continuation_flood_is_cut_off(server):
    baseline = good_call_ms(server.port)
    with FrameClient(server.port) as client:
        def frames():
            yield request_headers(client, 1, end_headers=False)
            while True:
                yield ContinuationFrame(1, data=b"")
        send_until_cut(client, frames(), 100_000)
        client.wait_eof()
        assert client.goaways, "no GOAWAY for a CONTINUATION flood"
    assert_survived(server, baseline, "CONTINUATION flood")


@pytest.mark.parametrize("flood", ["settings", "ping"])
def test_control_frame_floods_from_a_client_that_does_not_read(server, flood):
    """A client that sends SETTINGS or PINGs and never reads the ACKs: the server must not queue
    unbounded replies (nghttp2's max_outbound_ack) and must close the connection."""
    baseline = good_call_ms(server.port)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frame = SettingsFrame(0, settings={4: 65535}) if flood == "settings" else PingFrame(0, opaque_data=b"12345678")
    payload = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize() + frame.serialize() * 2000
    closed = False
    try:
        for _ in range(100):
            sock.sendall(payload)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        closed = True
    finally:
        sock.close()
    assert closed, f"the server kept accepting a {flood} flood of 200,000 frames"
    assert_survived(server, baseline, f"{flood} flood")


def test_slowloris_preface_and_many_idle_connections(start_server):
    server = start_server("--idle-timeout", "2s")
    baseline = good_call_ms(server.port)
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT) for _ in range(2000)]
    try:
        for byte in b"PRI * HTTP/2.0\r\n":
            slow.send(bytes([byte]))
            assert server.proc.poll() is None
        assert_survived(server, baseline, "slowloris + 2,000 idle connections")
        # The idle timeout closes them all, the slow one included (a socket timeout fails the test).
        for sock in [slow] + idle[:50]:
            read_to_eof(sock)
    finally:
        slow.close()
        for sock in idle:
            sock.close()


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


def test_connections_beyond_the_descriptor_budget_are_closed_on_arrival(sluice_bin):
    # 200 descriptors - 128 reserved - 2 for one upstream transfer on the in-process simulator = 70 connections.
    proc = start_with_descriptor_limit(sluice_bin, 200, "--max-active", "1")
    try:
        port = int(proc.stdout.readline().split("127.0.0.1:")[1].split()[0])
        sockets = [socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) for _ in range(100)]
        closed = 0
        for sock in sockets:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())
            try:
                closed += sock.recv(9) == b""  # the kept ones answer with SETTINGS
            except ConnectionResetError:
                closed += 1
        assert closed == 30, f"{closed} of 100 connections were closed, expected the 30 beyond the budget of 70"
        for sock in sockets:
            sock.close()
        assert proc.poll() is None
        good_call_ms(port)
    finally:
        proc.kill()
        proc.communicate()
