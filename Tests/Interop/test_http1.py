"""HTTP/1.1 on the HTTP/2 port: curl --http1.1, Python's http.client and ssl (ALPN), openssl s_client,
and raw sockets for what well-behaved clients never send (garbage, pipelining, oversize heads)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import time

import h2.config
import h2.connection
import h2.events
import pytest

from sluice_testlib import IO_TIMEOUT, SYNTHETIC
from streaming_testlib import http_get

MESSAGES = "/v1/messages"


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", str(int(IO_TIMEOUT)), *args],
                          capture_output=True, timeout=IO_TIMEOUT + 5)


class Response:
    """One HTTP/1.1 response read off a buffered socket file, chunk by chunk if chunked."""

    def __init__(self, stream, method: str = "GET"):
        self.stream = stream
        status_line = stream.readline()
        assert status_line.startswith(b"HTTP/1.1 "), f"not an HTTP/1.1 status line: {status_line!r}"
        self.status = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, value = line.decode().split(":", 1)
            self.headers[name.strip().lower()] = value.strip()
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        self.no_body = method == "HEAD" or self.status in (204, 304)

    def next_chunk(self) -> bytes | None:
        """The next chunk's data; None after the last chunk."""
        size_line = self.stream.readline()
        assert size_line.endswith(b"\r\n"), f"truncated chunked body (size line {size_line!r})"
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert self.stream.readline() == b"\r\n"
            return None
        data = self.stream.read(size)
        assert self.stream.read(2) == b"\r\n"
        return data

    def body(self) -> bytes:
        if self.no_body:
            return b""
        if self.chunked:
            return b"".join(iter(self.next_chunk, None))
        if "content-length" in self.headers:
            return self.stream.read(int(self.headers["content-length"]))
        return self.stream.read()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)


def request(path: str, method: str = "GET", headers: str = "", body: bytes = b"") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n".encode() + body


def exchange(port: int, data: bytes, method: str = "GET") -> tuple[Response, bytes]:
    with connect(port) as sock:
        sock.sendall(data)
        response = Response(sock.makefile("rb"), method)
        return response, response.body()


def rss_kib(pid: int) -> int:
    status = open(f"/proc/{pid}/status").read()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def read_to_eof(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.fixture
def simulator(sluice_bin, tls_cert):
    """`sluice simulate --port 0`: its /v1/messages is a plain HTTP handler that streams SSE."""
    processes = []

    def start(*flags: str) -> tuple[subprocess.Popen, int]:
        proc = subprocess.Popen([sluice_bin, "simulate", "--port", "0", *flags], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        processes.append(proc)
        line = proc.stdout.readline()
        return proc, int(line.split("127.0.0.1:")[1].split()[0])

    yield start
    for proc in processes:
        proc.kill()
        proc.wait()


def messages_request(scenario: dict, max_tokens: int = 1024) -> bytes:
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": max_tokens, "stream": True,
                       "messages": [{"role": "user", "content": "hello"}]}).encode()
    return request(MESSAGES, "POST", f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                   f"sluice-simulation: {json.dumps(scenario)}\r\n", body)


# MARK: Routes over cleartext and TLS


@pytest.mark.parametrize("path, expected", [("/healthz", "ok\n"), ("/readyz", "ready\n"), ("/metrics", "sluice_")])
def test_plain_routes_over_cleartext_with_curl(server, path, expected):
    result = curl("--http1.1", "-i", f"http://127.0.0.1:{server.port}{path}")
    assert result.returncode == 0, result.stderr.decode()
    head, body = result.stdout.decode().split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 200 OK\r\n"), head
    assert expected in body


@pytest.mark.parametrize("path, expected", [("/healthz", "ok\n"), ("/readyz", "ready\n"), ("/metrics", "sluice_")])
def test_plain_routes_over_tls_with_curl(tls_server, tls_cert, path, expected):
    result = curl("--http1.1", "--cacert", tls_cert.cert, "-i", f"https://127.0.0.1:{tls_server.port}{path}")
    assert result.returncode == 0, result.stderr.decode()
    head, body = result.stdout.decode().split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 200 OK\r\n"), head
    assert expected in body


def tls_connect(port: int, cert: str, alpn: list[str] | None) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=cert)
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context.wrap_socket(connect(port), server_hostname="localhost")


@pytest.mark.parametrize("alpn", [["http/1.1"], None], ids=["alpn-http1.1", "no-alpn"])
def test_tls_http1_with_python_ssl(tls_server, tls_cert, alpn):
    with tls_connect(tls_server.port, tls_cert.cert, alpn) as sock:
        assert sock.selected_alpn_protocol() == (alpn[0] if alpn else None)
        sock.sendall(request("/healthz"))
        response = Response(sock.makefile("rb"))
        assert (response.status, response.body()) == (200, b"ok\n")


def test_tls_alpn_prefers_h2_when_both_are_offered(tls_server, tls_cert):
    with tls_connect(tls_server.port, tls_cert.cert, ["http/1.1", "h2"]) as sock:
        assert sock.selected_alpn_protocol() == "h2"


def test_tls_alpn_http1_with_openssl_s_client(tls_server):
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{tls_server.port}", "-alpn", "http/1.1", "-quiet", "-ign_eof"],
        input=b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", capture_output=True, timeout=20,
    )
    output = result.stdout.decode(errors="replace")
    assert output.startswith("HTTP/1.1 200 OK\r\n"), output + result.stderr.decode(errors="replace")
    assert output.endswith("ready\n")


def test_h2_still_served_on_the_same_port(server):
    assert http_get(server.port, "/healthz") == (200, "ok\n")


# MARK: Refusals


def test_grpc_method_over_http1_is_refused_and_the_connection_stays_usable(server):
    with connect(server.port) as sock:
        stream = sock.makefile("rb")
        sock.sendall(request(SYNTHETIC, "POST", "content-type: application/grpc\r\ncontent-length: 5\r\n", b"\0\0\0\0\0"))
        refused = Response(stream)
        body = refused.body()
        assert refused.status == 505
        assert b"HTTP/2 with prior knowledge" in body and b"ALPN h2" in body
        sock.sendall(request("/healthz"))
        assert Response(stream).status == 200


def test_grpc_method_with_curl_http1_says_to_use_http2(server):
    result = curl("--http1.1", "-i", "-X", "POST", "-H", "content-type: application/grpc", f"http://127.0.0.1:{server.port}{SYNTHETIC}")
    output = result.stdout.decode()
    assert output.startswith("HTTP/1.1 505 "), output
    assert "need HTTP/2" in output and "Connect" in output


def test_unknown_path_is_404(server):
    response, body = exchange(server.port, request("/no/such/thing"))
    assert response.status == 404
    assert body == b"No such path: /no/such/thing\n"


def test_oversize_headers_get_431_and_a_close(start_server):
    server = start_server("--max-message-size", "1024")
    with connect(server.port) as sock:
        sock.sendall(request("/healthz", headers="x-padding: " + "a" * 20_000 + "\r\n"))
        received = read_to_eof(sock)
    assert received.startswith(b"HTTP/1.1 431 "), received[:200]
    assert b"connection: close\r\n" in received


def test_oversize_body_gets_413_declared_or_chunked(start_server):
    server = start_server("--max-message-size", "1024")
    declared = request("/healthz", "POST", "content-length: 5000\r\n")
    chunked = request("/healthz", "POST", "transfer-encoding: chunked\r\n", b"800\r\n" + b"x" * 2048 + b"\r\n0\r\n\r\n")
    for data in (declared, chunked):
        with connect(server.port) as sock:
            sock.sendall(data)
            received = read_to_eof(sock)
        assert received.startswith(b"HTTP/1.1 413 "), received[:200]
        assert b"limit of 1024 bytes" in received


def test_garbage_gets_400_and_the_server_keeps_serving(server):
    for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64, b"HELLO THERE\r\n\r\n",
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n"):
        with connect(server.port) as sock:
            sock.sendall(garbage)
            received = read_to_eof(sock)
        assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (garbage, received[:200])
    response, body = exchange(server.port, request("/healthz"))
    assert (response.status, body) == (200, b"ok\n")


# MARK: Connection management


def test_pipelined_requests_are_answered_in_order(server):
    paths = ["/healthz", "/readyz", "/nope", "/healthz", "/metrics", "/readyz"]
    batch = b"".join(request(path, "HEAD" if index == 3 else "GET") for index, path in enumerate(paths))
    with connect(server.port) as sock:
        sock.sendall(batch + request("/healthz", headers="connection: close\r\n"))
        stream = sock.makefile("rb")
        answers = []
        for index in range(len(paths) + 1):
            response = Response(stream, "HEAD" if index == 3 else "GET")
            answers.append((response.status, response.body()))
        assert stream.read() == b"", "the server closes after the request that said connection: close"
    assert answers[:4] == [(200, b"ok\n"), (200, b"ready\n"), (404, b"No such path: /nope\n"), (200, b"")]
    assert answers[4][0] == 200 and b"sluice_" in answers[4][1]
    assert answers[5:] == [(200, b"ready\n"), (200, b"ok\n")]


def test_keep_alive_reuses_one_connection(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=IO_TIMEOUT)
    try:
        bodies, local_ports = [], set()
        for path in ["/healthz", "/readyz", "/healthz"]:
            connection.request("GET", path)
            response = connection.getresponse()
            bodies.append(response.read())
            assert response.getheader("connection") is None
            local_ports.add(connection.sock.getsockname()[1])
        assert bodies == [b"ok\n", b"ready\n", b"ok\n"]
        assert len(local_ports) == 1
    finally:
        connection.close()


def test_head_has_no_body(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=IO_TIMEOUT)
    try:
        connection.request("HEAD", "/healthz")
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b""
        connection.request("GET", "/healthz")  # the same connection: no stray body bytes in between
        assert connection.getresponse().read() == b"ok\n"
    finally:
        connection.close()


def test_expect_100_continue(server):
    with connect(server.port) as sock:
        stream = sock.makefile("rb")
        sock.sendall(request("/healthz", "POST", "content-length: 4\r\nexpect: 100-continue\r\n"))
        assert stream.readline() == b"HTTP/1.1 100 Continue\r\n" and stream.readline() == b"\r\n"
        sock.sendall(b"body")
        response = Response(stream)
        assert (response.status, response.body()) == (200, b"ok\n")
    # A request that would be refused anyway is answered at once, without inviting the body.
    with connect(server.port) as sock:
        sock.sendall(request("/nope", "POST", "content-length: 4\r\nexpect: 100-continue\r\n"))
        received = read_to_eof(sock)
    assert received.startswith(b"HTTP/1.1 404 ") and b"connection: close" in received
    with connect(server.port) as sock:
        sock.sendall(request("/healthz", "POST", "content-length: 4\r\nexpect: teapot\r\n"))
        assert read_to_eof(sock).startswith(b"HTTP/1.1 417 ")


def test_request_sent_a_byte_at_a_time_is_http1_only(server):
    """A request that starts like the HTTP/2 preface ("P") and arrives one byte at a time: the
    answer is pure HTTP/1.1 (no HTTP/2 SETTINGS frame ahead of it)."""
    with connect(server.port) as sock:
        for byte in request("/healthz", "POST", "content-length: 0\r\nconnection: close\r\n"):
            sock.send(bytes([byte]))
        received = read_to_eof(sock)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n"), received[:100]
    assert received.endswith(b"\r\n\r\nok\n")


def test_http2_preface_sent_a_byte_at_a_time_is_still_http2(server):
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    connection.initiate_connection()
    with connect(server.port) as sock:
        for byte in connection.data_to_send():  # the preface and SETTINGS, one byte per send
            sock.send(bytes([byte]))
        stream_id = connection.get_next_available_stream_id()
        connection.send_headers(stream_id, [(":method", "GET"), (":scheme", "http"), (":path", "/healthz"),
                                            (":authority", "localhost")], end_stream=True)
        sock.sendall(connection.data_to_send())
        body, ended = b"", False
        while not ended:
            data = sock.recv(65536)
            assert data, "closed before the HTTP/2 response ended"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                ended = ended or isinstance(event, h2.events.StreamEnded)
            sock.sendall(connection.data_to_send())
    assert body == b"ok\n"


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(start_server):
    server = start_server("--idle-timeout", "1s")
    with connect(server.port) as idle, connect(server.port) as dribbling:
        idle.sendall(request("/healthz"))
        idle_stream = idle.makefile("rb")
        assert Response(idle_stream).body() == b"ok\n"
        dribbling.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
        assert idle_stream.read() == b""  # closed by the server (a socket timeout would fail the test)
        assert read_to_eof(dribbling) == b""


def test_connections_are_counted_with_http2_against_max_connections(start_server):
    server = start_server("--max-connections", "2")
    with connect(server.port) as first, connect(server.port) as second:
        for sock in (first, second):
            sock.sendall(request("/healthz"))
            assert Response(sock.makefile("rb")).body() == b"ok\n"
        with connect(server.port) as third:
            third.sendall(request("/healthz"))
            assert answer_or_refusal(third) == b"", "a third connection is closed on arrival"
    # Closing the HTTP/1.1 connections gives their slots back (once the server has seen them close).
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        with connect(server.port) as again:
            again.sendall(request("/healthz", headers="connection: close\r\n"))
            if received := answer_or_refusal(again):
                assert received.startswith(b"HTTP/1.1 200 ")
                break
        assert time.monotonic() < deadline, "the slots of closed HTTP/1.1 connections never came back"


def answer_or_refusal(sock: socket.socket) -> bytes:
    """Everything the server sent; empty if it closed the connection on arrival (FIN or reset)."""
    try:
        return read_to_eof(sock)
    except ConnectionResetError:
        return b""


# MARK: Streaming


def test_streamed_response_is_chunked_and_arrives_incrementally(simulator):
    """The simulator stalls after 4 SSE events and never ends the response: the client can only
    have those events if they were sent as they were written."""
    _, port = simulator()
    with connect(port) as sock:
        sock.sendall(messages_request({"output_tokens": 50, "fault": {"kind": "stall", "after_events": 4}}))
        response = Response(sock.makefile("rb"))
        assert response.status == 200
        assert response.chunked and response.headers["content-type"].startswith("text/event-stream")
        received = b""
        while received.count(b"\n\n") < 4:
            chunk = response.next_chunk()
            assert chunk is not None, "the stalled response ended"
            received += chunk
        events = [block.split(b"\n")[0] for block in received.split(b"\n\n") if block]
        assert events[0] == b"event: message_start"


def test_complete_stream_is_delivered_whole(simulator):
    """Chunked if the head went out before the handler finished, else with its length."""
    _, port = simulator()
    response, body = exchange(port, messages_request({"output_tokens": 30, "seed": 2}))
    assert response.status == 200 and (response.chunked or "content-length" in response.headers)
    assert body.split(b"\n")[0] == b"event: message_start"
    assert body.rstrip().split(b"\n\n")[-1].startswith(b"event: message_stop")


def test_dropped_stream_ends_without_the_last_chunk(simulator):
    """A handler that resets its response (the simulator's drop) closes the connection before
    the terminating chunk: the client sees a truncated message, as HTTP/2 sees RST_STREAM."""
    _, port = simulator()
    with connect(port) as sock:
        sock.sendall(messages_request({"output_tokens": 50, "fault": {"kind": "drop", "after_events": 3}}))
        response = Response(sock.makefile("rb"))
        with pytest.raises(AssertionError, match="truncated chunked body"):
            response.body()


def test_client_that_stops_reading_holds_up_nobody(simulator):
    """A long SSE response to a client that reads nothing: on a single event loop, other clients
    are still served, and the stalled response stays incomplete. (That the server then buffers
    at most a bounded amount is shown in HTTP1ConnectionTests, with a handler faster than the
    simulator.)"""
    _, port = simulator("--event-loops", "1")
    with connect(port) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(messages_request({"output_tokens": 100_000, "seed": 1}, max_tokens=100_000))
        stalled_stream = stalled.makefile("rb")
        assert Response(stalled_stream).chunked
        for _ in range(3):
            response, body = exchange(port, messages_request({"output_tokens": 20, "seed": 3}))
            assert response.status == 200 and b"event: message_stop" in body


def test_drain_finishes_the_response_in_flight_and_closes_idle_connections(simulator):
    """`sluice simulate` drains for 1 s: the short stream in flight ends whole, the idle connection at once."""
    proc, port = simulator()
    with connect(port) as idle, connect(port) as busy:
        idle_stream, busy_stream = idle.makefile("rb"), busy.makefile("rb")
        idle.sendall(request("/v1/messages", "GET"))
        refused = Response(idle_stream)
        assert refused.status == 405 and refused.body()  # the simulator wants POST; the connection stays open
        busy.sendall(messages_request({"output_tokens": 10, "token_interval_ms": 10, "seed": 4}))
        response = Response(busy_stream)
        first = response.next_chunk()
        assert first is not None and first.startswith(b"event: message_start")
        proc.send_signal(signal.SIGTERM)
        rest = b"".join(iter(response.next_chunk, None))  # ends with the terminating chunk
        assert b"event: message_stop" in rest
        assert busy_stream.read() == b"", "closed after the response"
        assert idle_stream.read() == b"", "idle keep-alive connections are closed at once"
    assert proc.wait(timeout=IO_TIMEOUT) == 0
