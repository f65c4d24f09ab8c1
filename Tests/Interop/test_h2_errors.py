"""gRPC over HTTP/2 at the frame level: request validation, statuses, trailers, limits, flow control.

Uses `FrameClient` (raw frames) so each test sends exactly the frames it describes, and
`H2Session` (the strict `h2` state machine) where a well-behaved client is what matters.
"""

from __future__ import annotations

import json
import time

import pytest

from sluice_testlib import (
    CANCEL,
    PROTOCOL_ERROR,
    GRPC_DEADLINE_EXCEEDED,
    GRPC_INVALID_ARGUMENT,
    GRPC_OK,
    GRPC_UNIMPLEMENTED,
    SYNTHETIC,
    FrameClient,
    H2Session,
    assert_synthetic_messages,
    envelope,
    json_envelope,
)

SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
REFUSED_STREAM = 0x7
GRPC_INTERNAL = 13


def assert_ok(result, frames: int, size: int = 16) -> None:
    assert result.reset_code is None, f"stream reset with {result.reset_code}"
    assert result.grpc_status == GRPC_OK, result.trailers
    assert_synthetic_messages(result.messages, frames, size)


# MARK: Successful calls


@pytest.mark.parametrize("content_type", ["application/grpc", "application/grpc+json"])
def test_response_shape_headers_data_trailers(server, content_type):
    with FrameClient(server.port) as client:
        result = client.call(SYNTHETIC, json_envelope({"frames": 3}), content_type=content_type)
    assert len(result.header_blocks) == 2, result.header_blocks
    headers, header_end_stream = result.header_blocks[0]
    assert not header_end_stream
    assert dict(headers)[":status"] == "200"
    assert dict(headers)["content-type"] == content_type
    assert "grpc-status" not in dict(headers)
    assert result.ended and result.data_frames >= 1
    assert_ok(result, 3)


def test_message_split_across_one_byte_data_frames(server):
    body = json_envelope({"frames": 4, "size": 3})
    with FrameClient(server.port) as client:
        result = client.call(SYNTHETIC, body, data_chunk=1)
    assert_ok(result, 4, size=3)


def test_concurrent_streams_on_one_connection(server):
    with H2Session(server.port) as session:
        stream_ids = [
            session.start(SYNTHETIC, json_envelope({"frames": n, "size": n, "interval_ms": 5}), "application/grpc")
            for n in range(1, 9)
        ]
        responses = session.wait(*stream_ids)
    for n, response in enumerate(responses, start=1):
        assert response.reset_code is None
        assert response.headers[":status"] == "200"
        assert response.trailers == {"grpc-status": "0"}
        assert_synthetic_messages([json.loads(p) for _, p in response.envelopes], n, size=n)


# MARK: Malformed requests


def test_length_prefix_longer_than_the_body(server):
    with FrameClient(server.port) as client:
        result = client.call(SYNTHETIC, envelope(b'{"frames":1}', length=100))
    assert result.grpc_status == GRPC_INVALID_ARGUMENT
    assert "100 bytes" in result.grpc_message and "12 arrived" in result.grpc_message


def test_request_ending_inside_the_envelope_header(server):
    with FrameClient(server.port) as client:
        result = client.call(SYNTHETIC, b"\x00\x00\x00")
    assert result.grpc_status == GRPC_INVALID_ARGUMENT
    assert "header" in result.grpc_message


def test_two_request_messages(server):
    with FrameClient(server.port) as client:
        result = client.call(SYNTHETIC, json_envelope({"frames": 1}) + json_envelope({"frames": 1}))
    assert result.grpc_status == GRPC_INVALID_ARGUMENT
    assert "exactly one request message" in result.grpc_message
    assert result.messages == []


def test_zero_request_messages(server):
    with FrameClient(server.port) as client:
        result = client.call(SYNTHETIC, body=None)  # END_STREAM on the HEADERS frame
    assert result.grpc_status == GRPC_INVALID_ARGUMENT
    assert "none" in result.grpc_message


def test_compressed_flag_without_encoding_is_internal(server):
    with FrameClient(server.port) as client:
        result = client.call(SYNTHETIC, envelope(b'{"frames":1}', flags=0x01))
    assert result.grpc_status == GRPC_INTERNAL
    assert "flagged compressed but the call declared no encoding" in result.grpc_message


def test_unknown_grpc_encoding_is_unimplemented(server):
    with FrameClient(server.port) as client:
        result = client.call(SYNTHETIC, json_envelope({"frames": 1}), headers=[("grpc-encoding", "snappy")])
    assert result.grpc_status == GRPC_UNIMPLEMENTED
    assert "snappy" in result.grpc_message


@pytest.mark.parametrize("timeout", ["abc", "123456789S", "10x", "-1S", "1.5S", ""])
def test_malformed_grpc_timeout(server, timeout):
    with FrameClient(server.port) as client:
        result = client.call(SYNTHETIC, json_envelope({"frames": 1}), headers=[("grpc-timeout", timeout)])
    assert result.grpc_status == GRPC_INVALID_ARGUMENT
    assert "grpc-timeout" in result.grpc_message


def test_server_side_deadline(server):
    request = json_envelope({"frames": 100, "interval_ms": 50})
    with FrameClient(server.port) as client:
        result = client.call(SYNTHETIC, request, headers=[("grpc-timeout", "300m")])
    assert result.grpc_status == GRPC_DEADLINE_EXCEEDED
    assert "deadline" in result.grpc_message
    assert 0 < len(result.messages) < 100


# MARK: Status encoding


def test_immediate_error_is_trailers_only(server):
    with FrameClient(server.port) as client:
        result = client.call("/sluice.v1.Nope/Missing", json_envelope({}))
    assert result.trailers_only, f"expected one HEADERS frame with END_STREAM, got {result.header_blocks}"
    headers = result.headers
    assert headers[":status"] == "200"
    assert headers["content-type"] == "application/grpc"
    assert headers["grpc-status"] == str(GRPC_UNIMPLEMENTED)
    assert "/sluice.v1.Nope/Missing" in result.grpc_message


@pytest.mark.parametrize("method", ["Méthode_ü", "100%_sure", "日本~%41"])
def test_grpc_message_percent_encoding_round_trips(server, method):
    """The unknown path comes back in grpc-message: non-ASCII bytes and '%' must be %XX-encoded,
    and decoding must give the path back exactly."""
    path = f"/sluice.v1.Synthetic/{method}"
    with FrameClient(server.port) as client:
        result = client.call(path, json_envelope({}))
    if result.reset_code is not None:
        pytest.fail(f"nghttp2 rejected :path {path!r} with RST_STREAM {result.reset_code}")
    raw = result.trailers["grpc-message"]
    assert all(0x20 <= ord(c) <= 0x7E for c in raw), f"grpc-message has bytes outside 0x20-0x7E: {raw!r}"
    assert result.grpc_status == GRPC_UNIMPLEMENTED
    assert path in result.grpc_message, (raw, result.grpc_message)


# MARK: Limits and settings


def test_settings_advertised(start_server):
    default, limited = start_server(), start_server("--max-streams-per-connection", "7")
    with FrameClient(default.port) as client:
        assert client.server_settings[SETTINGS_MAX_CONCURRENT_STREAMS] == 1000
        assert client.server_settings.get(SETTINGS_MAX_HEADER_LIST_SIZE, 0) > 0
    with FrameClient(limited.port) as client:
        assert client.server_settings[SETTINGS_MAX_CONCURRENT_STREAMS] == 7


def test_max_concurrent_streams_is_enforced(start_server):
    """A third stream over an acknowledged limit of 2 is never processed. RFC 9113 §5.1.2 asks for a
    stream error (REFUSED_STREAM or PROTOCOL_ERROR); nghttp2 1.52 sends GOAWAY(PROTOCOL_ERROR) once
    the limit is acknowledged, which also leaves the stream unprocessed: both are accepted."""
    server = start_server("--max-streams-per-connection", "2")
    slow = json_envelope({"frames": 50, "interval_ms": 20})
    with FrameClient(server.port) as client:
        client.start(SYNTHETIC, slow)
        client.start(SYNTHETIC, slow)
        third = client.start(SYNTHETIC, json_envelope({"frames": 1}))
        client.wait_for(lambda: client.streams[third].closed or client.goaways)
        if client.goaways:
            assert client.goaways[0].last_stream_id < third
        else:
            assert client.streams[third].reset_code in (REFUSED_STREAM, PROTOCOL_ERROR)
        assert client.streams[third].header_blocks == []


@pytest.mark.parametrize(
    "big_headers",
    [[("x-big", "b" * 20_000)], [(f"x-h{i}", "c" * 1000) for i in range(100)]],
    ids=["one-20KB-header", "100x1KB-headers"],
)
def test_header_list_over_the_limit_resets_only_the_stream(server, big_headers):
    with FrameClient(server.port) as client:
        limit = client.server_settings[SETTINGS_MAX_HEADER_LIST_SIZE]
        assert sum(len(n) + len(v) + 32 for n, v in big_headers) > limit
        rejected = client.call(SYNTHETIC, body=None, headers=big_headers)
        assert rejected.reset_code is not None, f"expected RST_STREAM, got {rejected.header_blocks}"
        assert rejected.header_blocks == []
        assert_ok(client.call(SYNTHETIC, json_envelope({"frames": 2})), 2)
        assert client.goaways == []


def test_client_cancel_mid_stream_keeps_the_connection(server):
    with FrameClient(server.port) as client:
        slow = client.start(SYNTHETIC, json_envelope({"frames": 1000, "interval_ms": 10}))
        client.wait_for(lambda: len(client.streams[slow].data) > 0)
        client.reset(slow, CANCEL)
        assert_ok(client.call(SYNTHETIC, json_envelope({"frames": 3})), 3)
        assert client.goaways == []


def test_unread_stream_memory_is_bounded(start_server):
    """Backpressure: a client that never opens its flow-control window (INITIAL_WINDOW_SIZE 0, no
    WINDOW_UPDATE) asks for 8000 x 16 KiB = 125 MiB. The server must not buffer that: its RSS
    stays under baseline + 50 MiB while we watch for 2 s, and with a single event loop another
    connection is still served."""
    server = start_server("--event-loops", "1")
    with FrameClient(server.port) as warmup:
        assert_ok(warmup.call(SYNTHETIC, json_envelope({"frames": 2, "size": 16384})), 2, 16384)
    baseline = server.rss_kib()
    bound = baseline + 50 * 1024

    stalled = FrameClient(server.port, settings={SETTINGS_INITIAL_WINDOW_SIZE: 0}, auto_window_update=False)
    try:
        stream = stalled.start(SYNTHETIC, json_envelope({"frames": 8000, "size": 16384}))
        # The response HEADERS mean the handler is producing; no DATA fits in a zero window.
        stalled.wait_for(lambda: stalled.streams[stream].header_blocks)
        peak = baseline
        watch_until = time.monotonic() + 2.0  # an observation window, not a synchronisation
        while time.monotonic() < watch_until:
            peak = max(peak, server.rss_kib())
            assert peak < bound, f"RSS {peak} KiB exceeds baseline {baseline} KiB + 50 MiB"
            time.sleep(0.05)
        assert stalled.streams[stream].data == b""

        with FrameClient(server.port) as other:
            assert_ok(other.call(SYNTHETIC, json_envelope({"frames": 3})), 3)
    finally:
        stalled.close()
