"""connectrpc (the Connect project's Python client) in its default settings: gzip-compressed requests,
gzip accepted, and HTTP/1.1 for an http:// URL; also over TLS and HTTP/2."""

from __future__ import annotations

import gzip
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


# Connect unary (application/json): Cancel and Health/Check with connectrpc's defaults (gzip offered both ways).
CANCEL = "/sluice.v1.StreamingService/Cancel"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def unary(address: str, path: str, request: dict, http_client: SyncClient | None = None) -> dict:
    service, name = path.strip("/").split("/")
    info = MethodInfo(name=name, service_name=service, input=dict, output=dict,
                      idempotency_level=IdempotencyLevel.UNKNOWN, stream_type=StreamType.UNARY)
    with ConnectClientSync(address, codec=JSONCodec(), http_client=http_client) as client:
        return client.execute_unary(request=request, method=info)


@pytest.mark.parametrize("version", [HTTPVersion.HTTP1, HTTPVersion.HTTP2])
def test_unary_health_and_cancel_over_http1_and_http2(server, version):
    address = f"http://127.0.0.1:{server.port}"
    with SyncHTTPTransport(http_version=version) as transport:
        client = SyncClient(transport)
        assert unary(address, HEALTH_CHECK, {"service": ""}, client) == {"status": "SERVING"}
        with pytest.raises(ConnectError) as missing:
            unary(address, CANCEL, {"stream_id": "no-such-stream"}, client)
        assert missing.value.code == Code.NOT_FOUND
        assert "no-such-stream" in missing.value.message
        with pytest.raises(ConnectError) as invalid:
            unary(address, CANCEL, {}, client)
        assert invalid.value.code == Code.INVALID_ARGUMENT
        assert "stream_id" in invalid.value.message
        with pytest.raises(ConnectError) as unknown:
            unary(address, HEALTH_CHECK, {"service": "nope.Service"}, client)
        assert unknown.value.code == Code.NOT_FOUND
        with pytest.raises(ConnectError) as unimplemented:
            unary(address, "/sluice.v1.Nope/Missing", {}, client)
        assert unimplemented.value.code == Code.UNIMPLEMENTED
        assert "/sluice.v1.Nope/Missing" in unimplemented.value.message
        # The errors left the server serving.
        assert unary(address, HEALTH_CHECK, {}, client) == {"status": "SERVING"}


def curl_unary(port: int, path: str, body: bytes, *headers: str, http2: bool = False) -> tuple[int, dict, dict]:
    """POSTs a Connect unary request with curl; returns (status, lower-case headers, JSON body)."""
    args = ["curl", "-sS", "-D", "-", "-o", "/dev/stdout", "--data-binary", "@-", "-H", "content-type: application/json"]
    if not any(header.startswith("connect-protocol-version") for header in headers):
        headers = (*headers, "connect-protocol-version: 1")
    for header in headers:
        args += ["-H", header]
    if http2:
        args.append("--http2-prior-knowledge")
    result = subprocess.run([*args, f"http://127.0.0.1:{port}{path}"], input=body, capture_output=True, check=True)
    head, _, payload = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    response_headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return status, response_headers, json.loads(payload)


@pytest.mark.parametrize("http2", [False, True])
def test_curl_unary_not_found_gzip_body_and_bad_encoding(server, http2):
    status, headers, body = curl_unary(server.port, CANCEL, b'{"stream_id":"gone"}', http2=http2)
    assert (status, body["code"]) == (404, "not_found")
    assert "gone" in body["message"]
    assert headers["content-type"] == "application/json"
    gzipped = gzip.compress(b'{"service":""}')
    status, _, body = curl_unary(server.port, HEALTH_CHECK, gzipped, "content-encoding: gzip", http2=http2)
    assert (status, body) == (200, {"status": "SERVING"})
    status, _, body = curl_unary(server.port, HEALTH_CHECK, b"not gzip", "content-encoding: gzip", http2=http2)
    assert (status, body["code"]) == (400, "invalid_argument")
    assert "gzip" in body["message"]
    status, _, body = curl_unary(server.port, HEALTH_CHECK, b"{}", "content-encoding: br", http2=http2)
    assert (status, body["code"]) == (501, "unimplemented")
    status, _, body = curl_unary(server.port, HEALTH_CHECK, b"{}", "connect-protocol-version: 2", http2=http2)
    assert (status, body["code"]) == (400, "invalid_argument")
    status, _, body = curl_unary(server.port, HEALTH_CHECK, b"{}", "connect-timeout-ms: soon", http2=http2)
    assert (status, body["code"]) == (400, "invalid_argument")
    status, _, body = curl_unary(server.port, HEALTH_CHECK, b"{}", http2=http2)
    assert (status, body) == (200, {"status": "SERVING"})


@pytest.mark.parametrize("version", [HTTPVersion.HTTP1, HTTPVersion.HTTP2])
def test_unary_cancel_ends_a_running_stream(server, version):
    from streaming_testlib import slow_request

    with SluiceClient(server.port) as grpc_client:
        reader = grpc_client.start(slow_request(seed=5, seconds=20, output_tokens=40))
        stream_id = reader.take(1)[0]["stream_id"]
        with SyncHTTPTransport(http_version=version) as transport:
            response = unary(f"http://127.0.0.1:{server.port}", CANCEL, {"stream_id": stream_id}, SyncClient(transport))
        assert response == {"stream_id": stream_id, "cancelled": True}
        assert reader.finish(shape=False).code == "CANCELLED"
