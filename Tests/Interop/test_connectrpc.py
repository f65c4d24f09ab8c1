"""connectrpc (the Connect project's Python client) in its default settings: gzip-compressed requests,
gzip accepted, and HTTP/1.1 for an http:// URL; also over TLS and HTTP/2."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from connectrpc.client import ConnectClientSync
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from pyqwest import HTTPVersion, SyncClient, SyncHTTPTransport

from sluice_testlib import SYNTHETIC, assert_synthetic_messages
from streaming_testlib import SluiceClient, send_request


class JSONCodec:
    """Sluice's messages are JSON objects, not protobuf: the codec named "json" (application/connect+json)."""

    def name(self) -> str:
        return "json"

    def encode(self, message) -> bytes:
        return json.dumps(message).encode()

    def decode(self, data, message_class):
        return json.loads(bytes(data))


def method(path: str) -> MethodInfo:
    service, name = path.strip("/").split("/")
    return MethodInfo(name=name, service_name=service, input=dict, output=dict,
                      idempotency_level=IdempotencyLevel.UNKNOWN, stream_type=StreamType.SERVER_STREAM)


def stream(address: str, path: str, request: dict, http_client: SyncClient | None = None) -> list[dict]:
    with ConnectClientSync(address, codec=JSONCodec(), http_client=http_client) as client:
        return list(client.execute_server_stream(request=request, method=method(path)))


def text_of(events: list[dict]) -> str:
    return "".join(event.get("delta", "") for event in events if event["type"] == "message_delta")


SEND_MESSAGE = "/sluice.v1.StreamingService/SendMessage"


def test_defaults_over_http1_stream_the_same_text_as_grpcio(server):
    request = send_request(seed=11, output_tokens=80)
    with SluiceClient(server.port) as grpc_client:
        expected = grpc_client.send_message(request)
    events = stream(f"http://127.0.0.1:{server.port}", SEND_MESSAGE, request)
    assert text_of(events) == expected.text != ""
    assert events[-1]["type"] == "stream_complete"
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))


def test_large_messages_come_back_gzip_compressed_over_http1(server):
    # connectrpc accepts gzip by default: 5,000-byte frames are compressed, and it inflates them.
    messages = stream(f"http://127.0.0.1:{server.port}", SYNTHETIC, {"frames": 3, "size": 5000})
    assert_synthetic_messages(messages, 3, size=5000)


@pytest.fixture(scope="module")
def ca_signed_cert(tmp_path_factory):
    """A CA and a localhost certificate it signed: rustls (under pyqwest) refuses a self-signed leaf."""
    d = tmp_path_factory.mktemp("ca")
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", str(d / "ca.key"),
        "-out", str(d / "ca.pem"), "-subj", "/CN=Sluice test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"), "-out", str(d / "leaf.csr"),
        "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", str(d / "leaf.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
        "-CAcreateserial", "-days", "2", "-extfile", str(d / "ext.cnf"), "-out", str(d / "cert.pem"))
    return d


@pytest.mark.parametrize("version", [HTTPVersion.HTTP1, HTTPVersion.HTTP2])
def test_tls_with_http1_and_http2(start_server, ca_signed_cert, version):
    server = start_server("--tls-cert", str(ca_signed_cert / "cert.pem"), "--tls-key", str(ca_signed_cert / "key.pem"))
    ca = (ca_signed_cert / "ca.pem").read_bytes()
    with SyncHTTPTransport(tls_ca_cert=ca, http_version=version) as transport:
        messages = stream(f"https://localhost:{server.port}", SYNTHETIC, {"frames": 4, "size": 2000}, SyncClient(transport))
    assert_synthetic_messages(messages, 4, size=2000)


def test_errors_over_http1_are_connect_errors_and_the_server_keeps_serving(server):
    address = f"http://127.0.0.1:{server.port}"
    with pytest.raises(ConnectError) as unknown:
        stream(address, "/sluice.v1.Nope/Missing", {})
    assert unknown.value.code == Code.UNIMPLEMENTED
    assert "/sluice.v1.Nope/Missing" in unknown.value.message
    with pytest.raises(ConnectError) as invalid:
        stream(address, SYNTHETIC, {"frames": -1})
    assert invalid.value.code == Code.INVALID_ARGUMENT
    assert "frames" in invalid.value.message
    assert_synthetic_messages(stream(address, SYNTHETIC, {"frames": 2}), 2)
