"""Fixtures: the sluice binary, a self-signed certificate, and servers started per test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import namedtuple

import pytest

from sluice_testlib import REPO_ROOT, SluiceServer

Certificate = namedtuple("Certificate", "cert key")


@pytest.fixture(scope="session")
def sluice_bin() -> str:
    """SLUICE_BIN, else the debug build `make test` produces."""
    binary = os.environ.get("SLUICE_BIN") or str(REPO_ROOT / ".build" / "debug" / "sluice")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"sluice binary {binary} not found: run `swift build` or set SLUICE_BIN")
    return binary


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory) -> Certificate:
    """A self-signed certificate for localhost and 127.0.0.1, made with the openssl CLI."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return Certificate(str(cert), str(key))


@pytest.fixture
def start_server(sluice_bin, tls_cert, tmp_path):
    """`start_server(*flags, tls=False)` starts `sluice serve --port 0 FLAGS` and returns it once
    it is listening. At teardown every server is killed; one that died on its own fails the test,
    and each server's stderr is printed (pytest shows it for failing tests)."""
    servers: list[SluiceServer] = []

    def start(*flags: str, tls: bool = False) -> SluiceServer:
        args = list(flags)
        if tls:
            args += ["--tls-cert", tls_cert.cert, "--tls-key", tls_cert.key]
        server = SluiceServer(sluice_bin, args, tmp_path / f"sluice-{len(servers)}.stderr", tls=tls)
        servers.append(server)
        return server

    yield start

    crashed = []
    for server in servers:
        if server.proc.poll() is not None and not server.expect_exit:
            crashed.append(f"{server.args} exited with {server.proc.returncode}")
        server.kill()
        print(f"--- stderr of {' '.join(server.args)} ---\n{server.stderr()}", file=sys.stderr)
    if crashed:
        pytest.fail("server died during the test: " + "; ".join(crashed))


@pytest.fixture
def server(start_server) -> SluiceServer:
    """An h2c (cleartext, prior knowledge) server with default flags."""
    return start_server()


@pytest.fixture
def tls_server(start_server) -> SluiceServer:
    """A TLS server (ALPN h2) using the session's self-signed certificate."""
    return start_server(tls=True)
