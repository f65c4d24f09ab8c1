"""Helpers for Sluice's interop tests: gRPC/Connect envelopes, the server process, HTTP/2 clients.

Two HTTP/2 clients:
- `FrameClient` writes and reads raw frames (hyperframe + hpack, the layers under `h2`), so a test
  controls every frame: tiny DATA frames, oversized header lists, RST_STREAM, no WINDOW_UPDATEs,
  and it keeps reading after a GOAWAY (h2's state machine refuses frames once it saw one).
- `H2Session` drives `h2.connection.H2Connection`, a strict client that rejects protocol
  violations by the server, for the ordinary well-behaved cases.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

SYNTHETIC = "/sluice.v1.Synthetic/Stream"
REPO_ROOT = Path(__file__).resolve().parents[2]
# Safety nets against hangs, never used to wait for something to happen.
IO_TIMEOUT = 10.0
STARTUP_TIMEOUT = 30.0

# HTTP/2 error codes (RFC 9113 §7) and gRPC status codes used by the tests.
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, CANCEL = 0x0, 0x1, 0x2, 0x8
GRPC_OK, GRPC_INVALID_ARGUMENT, GRPC_DEADLINE_EXCEEDED = 0, 3, 4
GRPC_RESOURCE_EXHAUSTED, GRPC_UNIMPLEMENTED, GRPC_UNAVAILABLE = 8, 12, 14
CONNECT_END_STREAM = 0x02


# MARK: Envelopes


def envelope(payload: bytes, flags: int = 0, length: int | None = None) -> bytes:
    """A gRPC/Connect envelope; `length` overrides the prefix (to lie about the size)."""
    return struct.pack(">BI", flags, len(payload) if length is None else length) + payload


def json_envelope(message, flags: int = 0) -> bytes:
    return envelope(json.dumps(message).encode(), flags)


def decode_envelopes(data: bytes) -> list[tuple[int, bytes]]:
    """Splits a response body into (flags, payload); fails on a truncated envelope."""
    out, offset = [], 0
    while offset < len(data):
        assert len(data) - offset >= 5, f"truncated envelope header at byte {offset} of {len(data)}"
        flags, length = struct.unpack_from(">BI", data, offset)
        end = offset + 5 + length
        assert end <= len(data), f"envelope at byte {offset} announces {length} bytes, only {len(data) - offset - 5} follow"
        out.append((flags, bytes(data[offset + 5 : end])))
        offset = end
    return out


def synthetic_delta(size: int) -> str:
    """The `delta` text Synthetic/Stream sends for a given frame size."""
    return "".join(chr(ord("a") + i % 26) for i in range(size))


def assert_synthetic_messages(messages: list[dict], frames: int, size: int = 16) -> None:
    """Checks count, order (seq 1..N) and content of Synthetic/Stream messages."""
    assert [m.get("seq") for m in messages] == list(range(1, frames + 1))
    delta = synthetic_delta(size)
    for m in messages:
        assert m == {"seq": m["seq"], "type": "message_delta", "delta": delta}


def synthetic_body_length(frames: int, size: int = 16) -> int:
    """Bytes of a complete Synthetic/Stream gRPC response body (envelopes only)."""
    return sum(
        5 + len(json.dumps({"seq": s, "type": "message_delta", "delta": synthetic_delta(size)}, separators=(",", ":")))
        for s in range(1, frames + 1)
    )


def decode_grpc_message(value: str) -> str:
    """grpc-message is percent-encoded UTF-8 (PROTOCOL-HTTP2.md)."""
    return urllib.parse.unquote(value, encoding="utf-8", errors="strict")


# MARK: Server process


class SluiceServer:
    """`sluice serve --port 0`, ready once it printed its `sluice listening on HOST:PORT` line."""

    READY = re.compile(r"^sluice listening on (\S+):(\d+) ")

    def __init__(self, binary: str, args: list[str], stderr_path: Path, tls: bool = False):
        self.args = [binary, "serve", "--port", "0", *args]
        self.tls = tls
        self.stderr_path = stderr_path
        self.expect_exit = False
        with open(stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
        self.ready_line = self._read_ready_line()
        match = self.READY.match(self.ready_line)
        if not match:
            self.kill()
            raise RuntimeError(f"unexpected first stdout line {self.ready_line!r}\nstderr:\n{self.stderr()}")
        self.host, self.port = match.group(1), int(match.group(2))

    def _read_ready_line(self) -> str:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        data = b""
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise RuntimeError(f"{self.args} printed no ready line in {STARTUP_TIMEOUT}s\nstderr:\n{self.stderr()}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self.proc.wait(timeout=IO_TIMEOUT)
                    raise RuntimeError(f"{self.args} exited with {code} before it was ready\nstderr:\n{self.stderr()}")
                data += chunk
        return data.split(b"\n", 1)[0].decode()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.expect_exit = True
        self.proc.send_signal(signum)

    def wait(self, timeout: float = IO_TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=IO_TIMEOUT)
        if self.proc.stdout:
            self.proc.stdout.close()


# MARK: Raw frame client


@dataclass
class StreamResult:
    """What one stream received."""

    stream_id: int
    header_blocks: list[tuple[list[tuple[str, str]], bool]] = field(default_factory=list)  # (headers, END_STREAM)
    data: bytearray = field(default_factory=bytearray)
    data_frames: int = 0
    ended: bool = False
    reset_code: int | None = None

    @property
    def closed(self) -> bool:
        return self.ended or self.reset_code is not None

    @property
    def headers(self) -> dict[str, str]:
        assert self.header_blocks, f"stream {self.stream_id} received no HEADERS"
        return dict(self.header_blocks[0][0])

    @property
    def trailers_only(self) -> bool:
        """The whole response was one HEADERS frame with END_STREAM (gRPC trailers-only)."""
        return len(self.header_blocks) == 1 and self.header_blocks[0][1] and self.data_frames == 0

    @property
    def trailers(self) -> dict[str, str]:
        """The block carrying the status: the trailers, or the only block of a trailers-only response."""
        assert self.header_blocks, f"stream {self.stream_id} received no HEADERS"
        block, end_stream = self.header_blocks[-1]
        assert end_stream, f"stream {self.stream_id}: last HEADERS has no END_STREAM: {self.header_blocks}"
        return dict(block)

    @property
    def grpc_status(self) -> int:
        return int(self.trailers["grpc-status"])

    @property
    def grpc_message(self) -> str:
        return decode_grpc_message(self.trailers.get("grpc-message", ""))

    @property
    def envelopes(self) -> list[tuple[int, bytes]]:
        return decode_envelopes(bytes(self.data))

    @property
    def messages(self) -> list[dict]:
        return [json.loads(payload) for _, payload in self.envelopes]


class ConnectionClosed(Exception):
    pass


def client_tls_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    return context


class FrameClient:
    """An HTTP/2 client at the frame level (prior knowledge, or TLS with ALPN h2)."""

    MAX_FRAME = 16384

    def __init__(self, port: int, *, tls_ca: str | None = None, settings: dict[int, int] | None = None,
                 auto_window_update: bool = True, host: str = "127.0.0.1", huffman: bool = True):
        sock = socket.create_connection((host, port), timeout=IO_TIMEOUT)
        if tls_ca:
            sock = client_tls_context(tls_ca).wrap_socket(sock, server_hostname="localhost")
            assert sock.selected_alpn_protocol() == "h2"
        self.sock = sock
        self.authority = f"{host}:{port}"
        self.scheme = "https" if tls_ca else "http"
        self.auto_window_update = auto_window_update
        self.huffman = huffman  # off for large header values: hpack's pure-Python Huffman coder takes ~15 ms per 20 KB
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder(max_header_list_size=1 << 20)
        self.buffer = bytearray()
        self.next_stream_id = 1
        self.streams: dict[int, StreamResult] = {}
        self.server_settings: dict[int, int] | None = None
        self.goaways: list[GoAwayFrame] = []
        self.eof = False
        self._header_block: tuple[HeadersFrame, bytearray] | None = None
        settings_frame = SettingsFrame(0, settings=settings or {})
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings_frame.serialize())
        self.wait_for(lambda: self.server_settings is not None)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # Sending

    def send(self, *frames: Frame) -> None:
        self.sock.sendall(b"".join(f.serialize() for f in frames))

    def send_headers(self, stream_id: int, headers: list[tuple[str, str]], end_stream: bool = False) -> None:
        block = self.encoder.encode(headers, huffman=self.huffman)
        chunks = [block[i : i + self.MAX_FRAME] for i in range(0, len(block), self.MAX_FRAME)] or [b""]
        first = HeadersFrame(stream_id, data=chunks[0])
        frames: list[Frame] = [first]
        frames += [ContinuationFrame(stream_id, data=chunk) for chunk in chunks[1:]]
        if end_stream:
            first.flags.add("END_STREAM")
        frames[-1].flags.add("END_HEADERS")
        self.send(*frames)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False, chunk: int = MAX_FRAME) -> None:
        """DATA frames of at most `chunk` bytes, each written separately."""
        pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
        for index, piece in enumerate(pieces):
            frame = DataFrame(stream_id, data=piece)
            if end_stream and index == len(pieces) - 1:
                frame.flags.add("END_STREAM")
            self.send(frame)

    def reset(self, stream_id: int, error_code: int = CANCEL) -> None:
        self.send(RstStreamFrame(stream_id, error_code=error_code))

    def request_headers(self, path: str, content_type: str = "application/grpc",
                        extra: list[tuple[str, str]] = (), method: str = "POST") -> list[tuple[str, str]]:
        headers = [(":method", method), (":scheme", self.scheme), (":path", path), (":authority", self.authority)]
        if content_type is not None:
            headers.append(("content-type", content_type))
        return headers + [("te", "trailers"), *extra]

    def start(self, path: str = SYNTHETIC, body: bytes | None = b"", *, content_type: str = "application/grpc",
              headers: list[tuple[str, str]] = (), end_stream: bool = True, data_chunk: int = MAX_FRAME) -> int:
        """Opens a stream; `body=None` ends the request on the HEADERS frame."""
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        self.streams[stream_id] = StreamResult(stream_id)
        self.send_headers(stream_id, self.request_headers(path, content_type, list(headers)),
                          end_stream=end_stream and body is None)
        if body is not None:
            self.send_data(stream_id, body, end_stream=end_stream, chunk=data_chunk)
        return stream_id

    def call(self, path: str = SYNTHETIC, body: bytes | None = b"", **kwargs) -> StreamResult:
        return self.wait_closed(self.start(path, body, **kwargs))

    # Receiving

    def wait_for(self, condition, timeout: float = IO_TIMEOUT) -> None:
        """Processes frames until `condition()` holds (fails after `timeout` as a safety net)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.read_frame(deadline - time.monotonic()) is None:
                raise ConnectionClosed(f"connection closed before the condition held; GOAWAYs: {self.goaways}")

    def wait_closed(self, stream_id: int, timeout: float = IO_TIMEOUT) -> StreamResult:
        stream = self.streams[stream_id]
        self.wait_for(lambda: stream.closed, timeout)
        return stream

    def wait_eof(self, timeout: float = IO_TIMEOUT) -> None:
        """Reads (processing frames) until the server closes the connection."""
        deadline = time.monotonic() + timeout
        while self.read_frame(deadline - time.monotonic()) is not None:
            pass

    def read_frame(self, timeout: float = IO_TIMEOUT) -> Frame | None:
        """Reads and processes one frame; None once the server closed the connection."""
        header = self._read_exactly(9, timeout)
        if header is None:
            return None
        frame, length = Frame.parse_frame_header(memoryview(header))
        payload = self._read_exactly(length, timeout)
        if payload is None:
            raise ConnectionClosed(f"connection closed inside a {type(frame).__name__}")
        frame.parse_body(memoryview(payload))
        self._process(frame)
        return frame

    def _read_exactly(self, count: int, timeout: float) -> bytes | None:
        deadline = time.monotonic() + max(timeout, 0)
        while len(self.buffer) < count:
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no frame within {timeout:.1f}s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError(f"no frame within {timeout:.1f}s") from None
            except (ConnectionResetError, ssl.SSLError):
                chunk = b""
            if not chunk:
                self.eof = True
                if self.buffer:
                    raise ConnectionClosed(f"connection closed with {len(self.buffer)} bytes of a partial frame")
                return None
            self.buffer += chunk
        out = bytes(self.buffer[:count])
        del self.buffer[:count]
        return out

    def _process(self, frame: Frame) -> None:
        stream = self.streams.get(frame.stream_id)
        if isinstance(frame, SettingsFrame):
            if "ACK" not in frame.flags:
                if self.server_settings is None:
                    self.server_settings = dict(frame.settings)
                else:
                    self.server_settings.update(frame.settings)
                self.send(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, PingFrame):
            if "ACK" not in frame.flags:
                self.send(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]))
        elif isinstance(frame, GoAwayFrame):
            self.goaways.append(frame)
        elif isinstance(frame, (HeadersFrame, ContinuationFrame)):
            if isinstance(frame, HeadersFrame):
                assert self._header_block is None, "HEADERS while a header block was open"
                self._header_block = (frame, bytearray(frame.data))
            else:
                assert self._header_block and self._header_block[0].stream_id == frame.stream_id, "stray CONTINUATION"
                self._header_block[1].extend(frame.data)
            if "END_HEADERS" in frame.flags:
                first, block = self._header_block
                self._header_block = None
                headers = [(n.decode(), v.decode("latin-1")) for n, v in self.decoder.decode(bytes(block), raw=True)]
                if stream is not None:
                    end_stream = "END_STREAM" in first.flags
                    stream.header_blocks.append((headers, end_stream))
                    stream.ended |= end_stream
        elif isinstance(frame, DataFrame):
            if stream is not None:
                stream.data += frame.data
                stream.data_frames += 1
                stream.ended |= "END_STREAM" in frame.flags
            if self.auto_window_update and frame.flow_controlled_length:
                updates = [WindowUpdateFrame(0, window_increment=frame.flow_controlled_length)]
                if stream is not None and not stream.closed:
                    updates.append(WindowUpdateFrame(frame.stream_id, window_increment=frame.flow_controlled_length))
                self.send(*updates)
        elif isinstance(frame, RstStreamFrame):
            if stream is not None and stream.reset_code is None:
                stream.reset_code = frame.error_code


# MARK: h2 state-machine client


@dataclass
class H2Response:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    trailers: dict[str, str] | None = None
    ended: bool = False
    reset_code: int | None = None

    @property
    def envelopes(self) -> list[tuple[int, bytes]]:
        return decode_envelopes(bytes(self.data))


class H2Session:
    """A strict client: `h2` raises if the server breaks the HTTP/2 rules it checks."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=IO_TIMEOUT)
        self.authority = f"{host}:{port}"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.responses: dict[int, H2Response] = {}
        self._flush()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def start(self, path: str, body: bytes, content_type: str, headers: list[tuple[str, str]] = ()) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        request = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", self.authority),
                   ("content-type", content_type), *headers]
        self.conn.send_headers(stream_id, request)
        self.conn.send_data(stream_id, body, end_stream=True)
        self.responses[stream_id] = H2Response()
        self._flush()
        return stream_id

    def wait(self, *stream_ids: int) -> list[H2Response]:
        pending = set(stream_ids)
        deadline = time.monotonic() + IO_TIMEOUT
        while pending:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionClosed(f"connection closed with streams {sorted(pending)} open")
            for event in self.conn.receive_data(data):
                response = self.responses.get(getattr(event, "stream_id", None))
                if isinstance(event, h2.events.ResponseReceived):
                    response.headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    response.data += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    response.trailers = dict(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    response.ended = True
                    pending.discard(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    response.reset_code = event.error_code
                    pending.discard(event.stream_id)
            self._flush()
        return [self.responses[s] for s in stream_ids]

    def call(self, path: str, body: bytes, content_type: str, headers: list[tuple[str, str]] = ()) -> H2Response:
        return self.wait(self.start(path, body, content_type, headers))[0]
