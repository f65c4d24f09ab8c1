"""Graceful shutdown on SIGTERM (--drain-timeout) and idle connections (--idle-timeout).

Uses `FrameClient`, which keeps reading frames after a GOAWAY, so a test sees everything the
server sends until it closes the connection.
"""

from __future__ import annotations

import signal
import socket

import pytest

from sluice_testlib import (
    GRPC_OK,
    GRPC_UNAVAILABLE,
    NO_ERROR,
    SYNTHETIC,
    FrameClient,
    assert_synthetic_messages,
    json_envelope,
)




def test_sigterm_sends_goaway_closes_and_exits_0(start_server):
    """SIGTERM with a stream outliving a 500 ms drain: GOAWAY, the listener closes (new connections
    are refused), the server closes the connection and the process exits with 0."""
    server = start_server("--drain-timeout", "500ms", "--event-loops", "1")
    with FrameClient(server.port) as client:
        stream = client.start(SYNTHETIC, json_envelope({"frames": 1000, "interval_ms": 20}))
        client.wait_for(lambda: client.streams[stream].data)
        server.signal(signal.SIGTERM)
        client.wait_for(lambda: client.goaways)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
        client.wait_eof()
        assert client.goaways[-1].error_code == NO_ERROR
        assert client.goaways[-1].last_stream_id >= stream
        assert len(client.streams[stream].messages) < 1000
    assert server.wait() == 0, server.stderr()


def test_sigterm_with_idle_connection_exits_0(start_server):
    server = start_server("--drain-timeout", "10s")
    with FrameClient(server.port) as client:
        assert client.call(SYNTHETIC, json_envelope({"frames": 1})).grpc_status == GRPC_OK
        server.signal(signal.SIGTERM)
        client.wait_eof()
        assert client.goaways and client.goaways[-1].error_code == NO_ERROR
    assert server.wait() == 0, server.stderr()


def test_sigterm_ends_streams_that_outlive_the_drain_with_unavailable(start_server):
    server = start_server("--drain-timeout", "500ms")
    with FrameClient(server.port) as client:
        stream = client.start(SYNTHETIC, json_envelope({"frames": 1000, "interval_ms": 20}))
        client.wait_for(lambda: client.streams[stream].data)
        server.signal(signal.SIGTERM)
        result = client.wait_closed(stream)
        assert client.goaways, "no GOAWAY before the stream ended"
        assert result.reset_code is None
        assert result.grpc_status == GRPC_UNAVAILABLE, result.trailers
        assert "drain" in result.grpc_message
        assert 0 < len(result.messages) < 1000
        assert_synthetic_messages(result.messages, len(result.messages))
        client.wait_eof()
    assert server.wait() == 0, server.stderr()


def test_sigterm_lets_streams_within_the_drain_finish(start_server):
    server = start_server("--drain-timeout", "10s")
    with FrameClient(server.port) as client:
        stream = client.start(SYNTHETIC, json_envelope({"frames": 5, "interval_ms": 100}))
        client.wait_for(lambda: client.streams[stream].data)
        server.signal(signal.SIGTERM)
        result = client.wait_closed(stream)
        assert client.goaways
        assert result.grpc_status == GRPC_OK, result.trailers
        assert_synthetic_messages(result.messages, 5)
        client.wait_eof()
    assert server.wait() == 0, server.stderr()


def test_idle_connection_gets_goaway_then_close(start_server):
    server = start_server("--idle-timeout", "300ms")
    with FrameClient(server.port) as client:
        result = client.call(SYNTHETIC, json_envelope({"frames": 1}))
        assert result.grpc_status == GRPC_OK
        client.wait_eof()  # no further request: the server must close on its own
        assert client.goaways, "connection closed without a GOAWAY"
        assert client.goaways[-1].error_code == NO_ERROR
        assert client.goaways[-1].last_stream_id == 1
    # The server itself keeps running and serving.
    with FrameClient(server.port) as client:
        assert client.call(SYNTHETIC, json_envelope({"frames": 1})).grpc_status == GRPC_OK


def test_idle_timeout_spares_connections_with_open_streams(start_server):
    """A stream lasting well past the idle timeout (24 x 100 ms vs 300 ms) is not cut off."""
    server = start_server("--idle-timeout", "300ms")
    with FrameClient(server.port) as client:
        result = client.call(SYNTHETIC, json_envelope({"frames": 25, "interval_ms": 100}))
        assert result.grpc_status == GRPC_OK, result.trailers
        assert_synthetic_messages(result.messages, 25)
        assert client.goaways == []
