"""nghttp2's own clients (nghttp, h2load from nghttp2-client) against Sluice."""

from __future__ import annotations

import re
import subprocess

import pytest

from sluice_testlib import IO_TIMEOUT, SYNTHETIC, json_envelope, synthetic_body_length

GRPC_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]


@pytest.fixture
def request_file(tmp_path):
    def write(message: dict):
        path = tmp_path / "request.bin"
        path.write_bytes(json_envelope(message))
        return str(path)
    return write


def nghttp(url: str, body_file: str) -> str:
    """`nghttp -v -n`: verbose frame log, response body discarded (its size is in the DATA lines)."""
    result = subprocess.run(["nghttp", "-v", "-n", "-t", str(int(IO_TIMEOUT)), "-d", body_file, *GRPC_HEADERS, url],
                            capture_output=True, text=True, timeout=IO_TIMEOUT + 5)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def received_headers(log: str) -> list[tuple[str, str]]:
    return re.findall(r"recv \(stream_id=\d+\) ([^:\s][^:]*|:[a-z]+): (.*)", log)


def data_bytes(log: str) -> int:
    return sum(int(n) for n in re.findall(r"recv DATA frame <length=(\d+), flags=0x0\d, stream_id=[1-9]\d*>", log))


def assert_grpc_ok(log: str, frames: int) -> None:
    headers = received_headers(log)
    assert (":status", "200") in headers
    assert ("content-type", "application/grpc") in headers
    assert headers[-1] == ("grpc-status", "0"), headers  # the trailers close the stream
    assert re.search(r"recv HEADERS frame <length=\d+, flags=0x05", log), "no trailers HEADERS with END_STREAM"
    assert data_bytes(log) == synthetic_body_length(frames)


def test_h2c(server, request_file):
    log = nghttp(f"http://127.0.0.1:{server.port}{SYNTHETIC}", request_file({"frames": 3}))
    assert_grpc_ok(log, 3)


def test_tls(tls_server, request_file):
    log = nghttp(f"https://127.0.0.1:{tls_server.port}{SYNTHETIC}", request_file({"frames": 4}))
    assert "The negotiated protocol: h2" in log
    assert_grpc_ok(log, 4)


def test_h2load_all_requests_succeed(server, request_file):
    """Correctness under concurrency, not speed: 200 calls on 4 connections, 10 streams each."""
    requests, frames = 200, 3
    result = subprocess.run(
        ["h2load", "-n", str(requests), "-c", "4", "-m", "10", "-d", request_file({"frames": frames}),
         *GRPC_HEADERS, f"http://127.0.0.1:{server.port}{SYNTHETIC}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                        r"(\d+) errored, (\d+) timeout", result.stdout, re.M)
    assert summary, result.stdout
    assert [int(n) for n in summary.groups()] == [requests, requests, requests, requests, 0, 0, 0], summary.group(0)
    assert re.search(rf"^status codes: {requests} 2xx, 0 3xx, 0 4xx, 0 5xx", result.stdout, re.M), result.stdout
    # Every response carried its complete body (h2load counts DATA payload bytes).
    data = re.search(r"^traffic: .*\((\d+)\) data$", result.stdout, re.M)
    assert data and int(data.group(1)) == requests * synthetic_body_length(frames), result.stdout
