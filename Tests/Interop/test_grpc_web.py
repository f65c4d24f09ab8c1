"""gRPC-Web (application/grpc-web+json and the base64 -text+json) over HTTP/1.1 and HTTP/2 with the status in a
final 0x80 frame, and CORS: preflights, exposed headers, and a page on another origin in headless Chromium."""

from __future__ import annotations

import base64
import http.server
import json
import struct
import threading
from pathlib import Path

import httpx2
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from sluice_testlib import (
    IO_TIMEOUT,
    SYNTHETIC,
    FrameClient,
    H2Session,
    StreamResult,
    assert_synthetic_messages,
    decode_envelopes,
    json_envelope,
)
from streaming_testlib import SEND_MESSAGE, send_request

GRPC_WEB = "application/grpc-web+json"
GRPC_WEB_TEXT = "application/grpc-web-text+json"
TRAILER_FLAG = 0x80
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def split_response(body: bytes) -> tuple[list[dict], dict[str, str]]:
    """The messages and the trailers of a gRPC-Web body, checking the trailer frame comes last, once."""
    frames = decode_envelopes(body)
    assert frames, "an empty body"
    *messages, (flags, trailer_block) = frames
    assert flags == TRAILER_FLAG, f"the last frame is flagged {flags:#x}, not 0x80"
    assert all(flags == 0 for flags, _ in messages)
    trailers = dict(line.split(": ", 1) for line in trailer_block.decode().split("\r\n") if line)
    return [json.loads(payload) for _, payload in messages], trailers


def decode_text(body: bytes) -> bytes:
    """gRPC-Web text: padded base64 chunks one after another, each decoded on its own."""
    out, rest = b"", body
    while rest:
        end = rest.find(b"=")
        if end < 0:
            out, rest = out + base64.b64decode(rest), b""
            continue
        while end < len(rest) and rest[end:end + 1] == b"=":
            end += 1
        out, rest = out + base64.b64decode(rest[:end]), rest[end:]
    return out


def http1_post(port: int, path: str, body: bytes, content_type: str, headers=None) -> httpx2.Response:
    with httpx2.Client(http1=True, http2=False, timeout=IO_TIMEOUT) as client:
        return client.post(f"http://127.0.0.1:{port}{path}", content=body,
                           headers={"content-type": content_type, "x-grpc-web": "1", **(headers or {})})


def test_http1_grpc_web_streams_send_message_with_a_trailer_frame(server):
    response = http1_post(server.port, SEND_MESSAGE, json_envelope(send_request(seed=5, output_tokens=30)), GRPC_WEB)
    assert response.status_code == 200
    assert response.headers["content-type"] == GRPC_WEB
    assert response.headers["transfer-encoding"] == "chunked"
    events, trailers = split_response(response.content)
    assert trailers == {"grpc-status": "0"}
    assert events[-1]["type"] == "stream_complete"
    assert "".join(e.get("delta", "") for e in events if e["type"] == "message_delta")


def test_http1_grpc_web_text(server):
    body = base64.b64encode(json_envelope({"frames": 3, "size": 10}))
    response = http1_post(server.port, SYNTHETIC, body, GRPC_WEB_TEXT)
    assert response.headers["content-type"] == GRPC_WEB_TEXT
    messages, trailers = split_response(decode_text(response.content))
    assert_synthetic_messages(messages, 3, size=10)
    assert trailers == {"grpc-status": "0"}


@pytest.mark.parametrize("content_type", [GRPC_WEB, GRPC_WEB_TEXT])
def test_http2_grpc_web_ends_with_the_trailer_frame_not_trailers(server, content_type):
    body = json_envelope({"frames": 2, "size": 5})
    text = content_type == GRPC_WEB_TEXT
    with H2Session(server.port) as session:
        response = session.call(SYNTHETIC, base64.b64encode(body) if text else body, content_type)
    assert response.ended and response.trailers is None
    assert response.headers[":status"] == "200"
    messages, trailers = split_response(decode_text(bytes(response.data)) if text else bytes(response.data))
    assert_synthetic_messages(messages, 2, size=5)
    assert trailers == {"grpc-status": "0"}


@pytest.mark.parametrize("path, body, content_type, status, text", [
    ("/sluice.v1.Nope/Missing", json_envelope({}), GRPC_WEB, "12", "unknown method /sluice.v1.Nope/Missing"),
    (SYNTHETIC, b"not base64!", GRPC_WEB_TEXT, "3", "not valid base64"),
    (SYNTHETIC, json_envelope({"frames": -1}), GRPC_WEB, "3", "frames"),
])
def test_errors_arrive_in_the_trailer_frame_and_the_server_keeps_serving(server, path, body, content_type, status, text):
    response = http1_post(server.port, path, body, content_type)
    assert response.status_code == 200
    raw = decode_text(response.content) if content_type == GRPC_WEB_TEXT else response.content
    messages, trailers = split_response(raw)
    assert messages == []
    assert trailers["grpc-status"] == status
    assert text in trailers["grpc-message"]
    ok = http1_post(server.port, SYNTHETIC, json_envelope({"frames": 1}), GRPC_WEB)
    assert split_response(ok.content)[1] == {"grpc-status": "0"}


# MARK: CORS

PAGE_ORIGIN = "http://127.0.0.1:{port}"


def preflight(port: int, origin: str, path: str = SEND_MESSAGE) -> httpx2.Response:
    with httpx2.Client(timeout=IO_TIMEOUT) as client:
        return client.request("OPTIONS", f"http://127.0.0.1:{port}{path}", headers={
            "origin": origin, "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,x-grpc-web,authorization"})


def test_preflight_and_exposed_headers_for_an_allowed_origin_only(start_server):
    server = start_server("--cors-origin", "https://app.example", "--cors-origin", "https://other.example")
    allowed = preflight(server.port, "https://app.example")
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert allowed.headers["access-control-allow-headers"] == "content-type,x-grpc-web,authorization"
    refused = preflight(server.port, "https://evil.example")
    assert refused.status_code == 204
    assert "access-control-allow-origin" not in refused.headers
    # The actual responses: gRPC-Web, and the SSE routes too.
    call = http1_post(server.port, SYNTHETIC, json_envelope({"frames": 1}), GRPC_WEB, {"origin": "https://app.example"})
    assert call.headers["access-control-allow-origin"] == "https://app.example"
    exposed = {h.strip() for h in call.headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message", "connect-content-encoding"} <= exposed
    with httpx2.Client(timeout=IO_TIMEOUT) as client:
        sse = client.get(f"http://127.0.0.1:{server.port}/v1/streams/st_0000000000000000/events",
                         headers={"origin": "https://other.example"})
    assert sse.status_code == 404
    assert sse.headers["access-control-allow-origin"] == "https://other.example"
    other = http1_post(server.port, SYNTHETIC, json_envelope({"frames": 1}), GRPC_WEB, {"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_http2_preflight_and_cors_headers_on_grpc_and_trailers_only_answers(start_server):
    server = start_server("--cors-origin", "https://app.example")
    origin = [("origin", "https://app.example")]
    with FrameClient(server.port) as client:
        stream_id = client.next_stream_id
        client.next_stream_id += 2
        client.streams[stream_id] = StreamResult(stream_id)
        client.send_headers(stream_id, client.request_headers(SEND_MESSAGE, None, origin + [
            ("access-control-request-method", "POST"), ("access-control-request-headers", "content-type")], method="OPTIONS"),
            end_stream=True)
        preflight = client.wait_closed(stream_id)
        assert preflight.header_blocks[0][1], "a 204 without a body ends on its HEADERS"
        assert preflight.headers[":status"] == "204"
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert preflight.headers["access-control-allow-headers"] == "content-type"
        ok = client.call(SYNTHETIC, json_envelope({"frames": 1}), headers=origin)
        assert ok.grpc_status == 0 and ok.headers["access-control-allow-origin"] == "https://app.example"
        missing = client.call("/sluice.v1.Nope/Missing", json_envelope({}), headers=origin)
        assert missing.trailers_only and missing.headers["access-control-expose-headers"].startswith("grpc-status")


PAGE = """<!doctype html><meta charset="utf-8"><title>gRPC-Web caller</title>
<script>
// Calls SendMessage with fetch and reads gRPC-Web frames as they arrive: 0x00 messages, then the 0x80 trailers.
async function callSendMessage(url, request) {
  const json = new TextEncoder().encode(JSON.stringify(request));
  const body = new Uint8Array(5 + json.length);
  new DataView(body.buffer).setUint32(1, json.length);
  body.set(json, 5);
  const response = await fetch(url, {method: "POST", body,
    headers: {"content-type": "application/grpc-web+json", "x-grpc-web": "1"}});
  const reader = response.body.getReader();
  let buffer = new Uint8Array(0), events = [], trailers = null;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    const joined = new Uint8Array(buffer.length + value.length);
    joined.set(buffer); joined.set(value, buffer.length); buffer = joined;
    while (buffer.length >= 5) {
      const length = new DataView(buffer.buffer, buffer.byteOffset).getUint32(1);
      if (buffer.length < 5 + length) break;
      const payload = new TextDecoder().decode(buffer.slice(5, 5 + length));
      if (buffer[0] & 0x80) trailers = payload; else events.push(JSON.parse(payload));
      buffer = buffer.slice(5 + length);
    }
  }
  return {status: response.status, events, trailers,
          exposedStatus: response.headers.get("grpc-status"), contentType: response.headers.get("content-type")};
}
</script>"""


@pytest.fixture
def page_server(tmp_path):
    """Serves the page from another origin (another port)."""
    (tmp_path / "index.html").write_text(PAGE)
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(tmp_path))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install chromium chromium-driver (make test-deps does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def call_from_page(browser, page_port: int, sluice_port: int, request: dict):
    browser.get(f"http://127.0.0.1:{page_port}/index.html")
    return browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "callSendMessage(arguments[0], arguments[1]).then(done, e => done({error: String(e)}));",
        f"http://127.0.0.1:{sluice_port}{SEND_MESSAGE}", request)


def test_browser_on_another_origin_streams_when_allowed(browser, page_server, start_server):
    page_port = page_server.server_address[1]
    server = start_server("--cors-origin", PAGE_ORIGIN.format(port=page_port))
    result = call_from_page(browser, page_port, server.port, send_request(seed=3, output_tokens=20))
    assert "error" not in result, result
    assert result["status"] == 200 and result["contentType"] == GRPC_WEB
    assert result["trailers"] == "grpc-status: 0\r\n"
    assert result["events"][-1]["type"] == "stream_complete"
    assert [e["seq"] for e in result["events"]] == list(range(1, len(result["events"]) + 1))


def test_browser_is_refused_without_cors_origin(browser, page_server, server):
    result = call_from_page(browser, page_server.server_address[1], server.port, send_request(seed=3, output_tokens=5))
    assert "Failed to fetch" in result.get("error", ""), result
