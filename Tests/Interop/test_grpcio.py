"""The official gRPC Python client (grpcio) against Sluice, with JSON (de)serializers."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from sluice_testlib import SYNTHETIC, assert_synthetic_messages

CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]


def to_json(message) -> bytes:
    return json.dumps(message).encode()


def from_json(data: bytes):
    return json.loads(data)


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=CHANNEL_OPTIONS) as channel:
        yield channel


def synthetic(channel, serializer=to_json, path=SYNTHETIC):
    return channel.unary_stream(path, request_serializer=serializer, response_deserializer=from_json)


def rpc_error(call_iterator) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        for _ in call_iterator:
            pass
    return caught.value


def test_stream_frames_in_order(channel):
    call = synthetic(channel)({"frames": 10, "size": 100})
    messages = list(call)
    assert_synthetic_messages(messages, 10, size=100)
    assert call.code() == grpc.StatusCode.OK


def test_large_frames(channel):
    messages = list(synthetic(channel)({"frames": 3, "size": 300_000}))
    assert_synthetic_messages(messages, 3, size=300_000)


def test_unknown_method(channel):
    error = rpc_error(synthetic(channel, path="/sluice.v1.Synthetic/Nope")({}))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "/sluice.v1.Synthetic/Nope" in error.details()


def test_invalid_json_request(channel):
    error = rpc_error(synthetic(channel, serializer=lambda _: b"{nope")({}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    prefix = "the request is not valid JSON: "
    assert error.details().startswith(prefix), error.details()
    assert len(error.details()) > len(prefix), "the parse error itself is missing"


@pytest.mark.parametrize("request_message, field", [
    ({"frames": 1_000_001}, "frames"),
    ({"frames": -1}, "frames"),
    ({"size": 2_000_000}, "size"),
    ({"frames": "three"}, "frames"),
])
def test_out_of_bounds_request(channel, request_message, field):
    error = rpc_error(synthetic(channel)(request_message))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.details()


def test_deadline_exceeded(channel):
    error = rpc_error(synthetic(channel)({"frames": 50, "interval_ms": 100}, timeout=0.3))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_cancel_mid_stream_then_new_call(channel):
    call = synthetic(channel)({"frames": 1000, "interval_ms": 10})
    assert next(call)["seq"] == 1
    call.cancel()
    assert rpc_error(call).code() == grpc.StatusCode.CANCELLED
    assert_synthetic_messages(list(synthetic(channel)({"frames": 3})), 3)


def test_oversized_request_message(start_server):
    server = start_server("--max-message-size", "1024")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=CHANNEL_OPTIONS) as channel:
        error = rpc_error(synthetic(channel)({"frames": 1, "padding": "x" * 2000}))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "1024" in error.details()
        # Just under the limit still works on the same channel.
        assert_synthetic_messages(list(synthetic(channel)({"frames": 2, "padding": "x" * 900})), 2)


def test_tls(tls_server, tls_cert):
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_cert.cert).read_bytes())
    options = CHANNEL_OPTIONS + [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(f"127.0.0.1:{tls_server.port}", credentials, options=options) as channel:
        assert_synthetic_messages(list(synthetic(channel)({"frames": 4})), 4)
        error = rpc_error(synthetic(channel, path="/sluice.v1.Synthetic/Nope")({}))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
