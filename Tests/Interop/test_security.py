"""Security checks: TLS versions and ciphers, and secrets that never leave the process.

TLS is probed with the `openssl s_client` CLI, allowed to offer old protocols (SECLEVEL=0), so a
refusal is the server's. The secrets test configures a recognisable upstream key and caller token,
exercises success and failure paths, and searches every byte the server emitted for them."""
import os
import subprocess

import grpc
import pytest

from sluice_testlib import SluiceServer
from streaming_testlib import SluiceClient, http_get, send_request

UPSTREAM_KEY = "sk-ant-api03-SECRET-UPSTREAM-KEY-0123456789"
CALLER_TOKEN = "caller-SECRET-token-9876543210"


def s_client(port: int, *flags: str) -> str:
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "h2", "-cipher", "DEFAULT:@SECLEVEL=0", *flags],
        input=b"", capture_output=True, timeout=20,
    )
    return (result.stdout + result.stderr).decode(errors="replace")


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_old_tls_versions_are_refused_by_the_server(tls_server, version):
    output = s_client(tls_server.port, version)
    assert "alert protocol version" in output, output
    assert "ALPN protocol: h2" not in output


@pytest.mark.parametrize("version, cipher_prefix", [("-tls1_2", "ECDHE-"), ("-tls1_3", "TLS_")])
def test_modern_tls_negotiates_h2_with_an_aead_cipher(tls_server, version, cipher_prefix):
    output = s_client(tls_server.port, version)
    assert "ALPN protocol: h2" in output, output
    cipher_line = next(line for line in output.splitlines() if "Cipher is" in line)
    assert cipher_prefix in cipher_line and ("GCM" in cipher_line or "CHACHA20" in cipher_line), cipher_line


def test_cbc_ciphers_are_refused_on_tls12(tls_server):
    output = s_client(tls_server.port, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")
    assert "ALPN protocol: h2" not in output
    assert "handshake failure" in output or "no shared cipher" in output or "alert" in output, output


@pytest.fixture
def simulator(sluice_bin, tmp_path):
    proc = subprocess.Popen([sluice_bin, "simulate", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    port = int(line.split("127.0.0.1:")[1].split()[0])
    yield port
    proc.kill()
    proc.wait()


def test_secrets_appear_in_no_event_log_metric_or_error(sluice_bin, simulator, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("SLUICE_API_KEYS", CALLER_TOKEN)
    server = SluiceServer(sluice_bin, ["--upstream-url", f"http://127.0.0.1:{simulator}", "--upstream-is-simulator",
                                       "--log-format", "json", "--log-level", "trace"], tmp_path / "server.stderr")
    emitted: list[str] = [server.ready_line]
    try:
        with SluiceClient(server.port, token=CALLER_TOKEN) as client:
            ok = client.send_message(send_request(seed=1))
            assert ok.code == "OK"
            emitted += [str(event) for event in ok.events]
            for fault in ({"kind": "http_status", "status": 401}, {"kind": "http_status", "status": 400},
                          {"kind": "drop", "after_events": 3, "times": 9}):
                failed = client.send_message(send_request(seed=2, fault=fault), shape=False)
                assert failed.code != "OK"
                emitted += [str(event) for event in failed.events] + [failed.details]
        with SluiceClient(server.port, token=CALLER_TOKEN + "-wrong") as intruder:
            denied = intruder.send_message(send_request(seed=3), shape=False)
            assert denied.code == "UNAUTHENTICATED"
            emitted.append(denied.details)
        status, metrics = http_get(server.port, "/metrics")
        assert status == 200
        emitted.append(metrics)
    finally:
        server.kill()
    emitted.append(server.stderr())
    everything = "\n".join(emitted)
    assert "UNAUTHENTICATED" in everything or "not valid" in everything  # the search covers real output
    for secret in (UPSTREAM_KEY, CALLER_TOKEN, UPSTREAM_KEY[-12:], CALLER_TOKEN[-12:]):
        assert secret not in everything, f"{secret!r} leaked"


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["simulate", "--port", "0"]])
def test_unusable_tls_files_name_the_file_and_the_flags(sluice_bin, tmp_path, command):
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    result = subprocess.run([sluice_bin, *command, "--tls-cert", str(not_pem), "--tls-key", str(not_pem)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 64, result.stderr
    assert f"cannot load the certificate chain from {not_pem}" in result.stderr, result.stderr
    assert "(--tls-cert, --tls-key)" in result.stderr, result.stderr


@pytest.mark.parametrize("command", [["call", "hello"], ["loadtest", "--streams", "1"]])
def test_an_unusable_ca_file_names_the_file_and_the_flag(sluice_bin, tmp_path, command):
    missing = tmp_path / "missing-ca.pem"
    result = subprocess.run([sluice_bin, *command, "--target", "https://127.0.0.1:9", "--ca-cert", str(missing)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0
    assert f"cannot load CA certificates from {missing}" in result.stderr, result.stderr
    assert "(--ca-cert)" in result.stderr, result.stderr
