"""Connect streaming protocol (application/connect+json) through the strict `h2` client."""

from __future__ import annotations

import json

from sluice_testlib import (
    CONNECT_END_STREAM,
    SYNTHETIC,
    H2Session,
    assert_synthetic_messages,
    json_envelope,
)

CONNECT_JSON = "application/connect+json"


def connect_call(port: int, path: str, request: dict, headers=()):
    """Returns (response, messages, end-stream body) after checking the Connect framing."""
    with H2Session(port) as session:
        response = session.call(path, json_envelope(request), CONNECT_JSON, list(headers))
    assert response.reset_code is None
    assert response.ended
    assert response.headers[":status"] == "200"  # Connect streaming responses are always 200
    assert response.headers["content-type"] == CONNECT_JSON
    assert not response.trailers, f"Connect carries its status in the end-stream message, got trailers {response.trailers}"
    assert "grpc-status" not in response.headers
    envelopes = response.envelopes
    assert envelopes, "no end-stream message"
    *messages, (last_flags, last_payload) = envelopes
    assert last_flags == CONNECT_END_STREAM, f"last envelope flags {last_flags:#x}"
    assert all(flags == 0 for flags, _ in messages)
    return response, [json.loads(p) for _, p in messages], json.loads(last_payload)


def test_stream_then_empty_end_stream(server):
    _, messages, end = connect_call(server.port, SYNTHETIC, {"frames": 5, "size": 7})
    assert_synthetic_messages(messages, 5, size=7)
    assert end == {}


def test_connect_content_type_with_parameters(server):
    with H2Session(server.port) as session:
        response = session.call(SYNTHETIC, json_envelope({"frames": 1}), CONNECT_JSON + "; charset=utf-8")
    assert response.headers[":status"] == "200"
    assert response.headers["content-type"] == CONNECT_JSON
    assert response.envelopes[-1] == (CONNECT_END_STREAM, b"{}")


def test_unknown_method_is_unimplemented(server):
    _, messages, end = connect_call(server.port, "/sluice.v1.Nope/Missing", {})
    assert messages == []
    assert set(end) == {"error"}
    assert end["error"]["code"] == "unimplemented"
    assert "/sluice.v1.Nope/Missing" in end["error"]["message"]


def test_invalid_argument(server):
    _, messages, end = connect_call(server.port, SYNTHETIC, {"frames": -1})
    assert messages == []
    assert end["error"]["code"] == "invalid_argument"
    assert "frames" in end["error"]["message"]


def test_connect_timeout_expires(server):
    request = {"frames": 100, "interval_ms": 50}
    _, messages, end = connect_call(server.port, SYNTHETIC, request, [("connect-timeout-ms", "300")])
    assert end["error"]["code"] == "deadline_exceeded"
    assert 0 < len(messages) < 100
    assert_synthetic_messages(messages, len(messages))


def test_malformed_connect_timeout(server):
    _, messages, end = connect_call(server.port, SYNTHETIC, {"frames": 1}, [("connect-timeout-ms", "12345678901")])
    assert messages == []
    assert end["error"]["code"] == "invalid_argument"
    assert "connect-timeout-ms" in end["error"]["message"]
