"""`POST /v1/messages` on `sluice serve`: the official `anthropic` Python SDK with its base_url at Sluice.

The oracle: for the same request and seed, `sluice simulate`'s own non-streaming answer is the Message the SDK
must get through Sluice, streamed (`get_final_message()`) or not, over HTTP/1.1, h2c (httpx `http2=True`) and TLS.
Only the message id differs (Sluice's own, the same across retries).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import threading
import zlib

import anthropic
import httpx2 as httpx  # the HTTP client anthropic 2.x is built on
import pytest

from sluice_testlib import REPO_ROOT, FrameClient
from streaming_testlib import SluiceClient, send_request, wait_for_metrics
from test_anthropic_sdk import scenario as oracle_headers, without_none

MODEL = "claude-sim-1"
QUESTION = [{"role": "user", "content": "Tell me how streams resume."}]
TOOLS = [{
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]


@pytest.fixture(scope="module")
def simulator_url(tmp_path_factory) -> str:
    """`sluice simulate --port 0`, the oracle: its answers without Sluice in between."""
    binary = os.environ.get("SLUICE_BIN") or str(REPO_ROOT / ".build" / "debug" / "sluice")
    stderr_path = tmp_path_factory.mktemp("simulator") / "stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen([binary, "simulate", "--port", "0"], stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        line = proc.stdout.readline().strip()
        prefix = "sluice simulator listening on "
        assert line.startswith(prefix), f"unexpected first line {line!r}: {stderr_path.read_text(errors='replace')}"
        host, _, port = line[len(prefix):].rpartition(":")
        yield f"http://{host}:{int(port)}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def oracle(simulator_url):
    with anthropic.Anthropic(base_url=simulator_url, api_key="test", max_retries=0) as client:
        yield client


def sdk_client(server, transport: str, tls_cert=None, api_key: str = "test") -> anthropic.Anthropic:
    """The SDK on `server` over `transport`: "http1", "h2c" (prior knowledge) or "tls" (ALPN h2)."""
    if transport == "tls":
        http = anthropic.DefaultHttpxClient(http2=True, verify=ssl.create_default_context(cafile=tls_cert.cert))
        base_url = f"https://{server.host}:{server.port}"
    else:
        http = anthropic.DefaultHttpxClient(http2=transport == "h2c", http1=transport == "http1")
        base_url = f"http://{server.host}:{server.port}"
    return anthropic.Anthropic(base_url=base_url, api_key=api_key, http_client=http, max_retries=0)


@pytest.fixture(params=["http1", "h2c", "tls"])
def transport(request) -> str:
    return request.param


@pytest.fixture
def client(start_server, tls_cert, transport):
    server = start_server(tls=transport == "tls")
    with sdk_client(server, transport, tls_cert) as client:
        yield client


def simulation(**fields) -> dict:
    return {"simulation": fields}


def comparable(message) -> dict:
    """The Message less its id (Sluice's own) and the fields the SDK adds as None."""
    dump = without_none(message.model_dump())
    dump.pop("id")
    return dump


def check_against_oracle(client, oracle, body: dict, scenario: dict):
    """Sluice streamed == Sluice created == the simulator's own non-streaming answer; returns the streamed Message."""
    expected = comparable(oracle.messages.create(**body, extra_headers=oracle_headers(**scenario)))
    with client.messages.stream(**body, extra_body=simulation(**scenario)) as stream:
        streamed_text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.id.startswith("msg_")
    assert comparable(final) == expected
    assert streamed_text == "".join(block.text for block in final.content if block.type == "text")
    created = client.messages.create(**body, extra_body=simulation(**scenario))
    assert comparable(created) == expected
    return final


def tiny_png() -> str:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


# MARK: The Done-when list, over HTTP/1.1, h2c and TLS

def test_create_and_stream_equal_the_simulators_answer(client, oracle):
    message = check_against_oracle(client, oracle, {"model": MODEL, "max_tokens": 1024, "messages": QUESTION},
                                   {"seed": 1, "output_tokens": 80})
    assert message.stop_reason == "end_turn" and message.model == MODEL
    assert message.usage.input_tokens > 0 and message.usage.output_tokens >= 70


def test_client_tool_round_trip(client, oracle):
    scenario = {"seed": 4, "tool_calls": [{"name": "get_weather", "input": {"city": "São Paulo", "n": 9007199254740993}}]}
    body = {"model": MODEL, "max_tokens": 1024, "messages": QUESTION, "tools": TOOLS}
    first = check_against_oracle(client, oracle, body, scenario)
    assert first.stop_reason == "tool_use"
    use = next(block for block in first.content if block.type == "tool_use")
    assert use.name == "get_weather" and use.input["city"] == "São Paulo"
    follow_up = QUESTION + [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 °C"}]},
    ]
    answer = check_against_oracle(client, oracle, {**body, "messages": follow_up}, scenario)
    assert answer.stop_reason == "end_turn"
    assert "Sunny, 21 °C" in answer.content[0].text


def test_thinking_with_signature_round_trip(client, oracle):
    scenario = {"seed": 7, "thinking_tokens": 30, "output_tokens": 20,
                "tool_calls": [{"name": "get_weather", "input": {"city": "Oslo"}}]}
    body = {"model": MODEL, "max_tokens": 4096, "messages": QUESTION, "tools": TOOLS,
            "thinking": {"type": "enabled", "budget_tokens": 1024}}
    first = check_against_oracle(client, oracle, body, scenario)
    thinking = first.content[0]
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature
    use = next(block for block in first.content if block.type == "tool_use")
    follow_up = QUESTION + [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Snow"}]},
    ]
    answer = check_against_oracle(client, oracle, {**body, "messages": follow_up}, scenario)
    assert answer.stop_reason == "end_turn"


def test_image_block(client, oracle):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": tiny_png()}}
    messages = [{"role": "user", "content": [image, {"type": "text", "text": "What is in this picture?"}]}]
    with_image = check_against_oracle(client, oracle, {"model": MODEL, "max_tokens": 256, "messages": messages},
                                      {"seed": 8, "output_tokens": 20})
    without = client.messages.create(model=MODEL, max_tokens=256, messages=[{"role": "user", "content": "What is in this picture?"}],
                                     extra_body=simulation(seed=8, output_tokens=20))
    assert with_image.usage.input_tokens > without.usage.input_tokens


def test_stop_sequences(client, oracle):
    scenario = {"seed": 9, "output_tokens": 60}
    plain = client.messages.create(model=MODEL, max_tokens=256, messages=QUESTION, extra_body=simulation(**scenario))
    words = plain.content[0].text.split()
    stop = words[len(words) // 2]
    body = {"model": MODEL, "max_tokens": 256, "messages": QUESTION, "stop_sequences": [stop]}
    message = check_against_oracle(client, oracle, body, scenario)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert stop not in message.content[0].text
    assert plain.content[0].text.startswith(message.content[0].text)


def test_invalid_request_is_bad_request_error(client):
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=0, messages=QUESTION)
    assert caught.value.status_code == 400
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in caught.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        with client.messages.stream(model=MODEL, max_tokens=64, messages=[]) as stream:
            stream.get_final_message()
    # The server keeps serving.
    assert client.messages.create(model=MODEL, max_tokens=16, messages=QUESTION).content


def test_mid_stream_drop_is_continued_invisibly(client):
    body = {"model": MODEL, "max_tokens": 1024, "messages": QUESTION}
    clean = client.messages.create(**body, extra_body=simulation(seed=11, output_tokens=60))
    with client.messages.stream(**body, extra_body=simulation(seed=11, output_tokens=60,
                                                             fault={"kind": "drop", "after_events": 20, "times": 1})) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert final.content[0].text == clean.content[0].text
    assert [block.type for block in final.content] == ["text"]
    assert events.count("message_start") == 1 and events.count("message_stop") == 1
    assert events.count("content_block_start") == 1


def test_count_tokens_equals_the_simulators_count(client, oracle):
    body = {"model": MODEL, "system": "Be brief.", "messages": QUESTION, "tools": TOOLS}
    counted = client.messages.count_tokens(**body, extra_headers={"anthropic-beta": "token-counting-2024-11-01"})
    assert counted.input_tokens == oracle.messages.count_tokens(**body).input_tokens
    # The same count a message for that body reports.
    assert counted.input_tokens == oracle.messages.create(**body, max_tokens=16).usage.input_tokens


def test_invalid_count_tokens_is_bad_request_error(client):
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.count_tokens(model="", messages=QUESTION)
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert client.messages.count_tokens(model=MODEL, messages=QUESTION).input_tokens > 0  # still serving


# MARK: Once: keys, capacity, draining

def test_wrong_key_is_authentication_error(start_server, tls_cert, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("sk-sluice-right\n")
    server = start_server("--keys-file", str(keys))
    with sdk_client(server, "h2c", api_key="sk-sluice-wrong") as wrong:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            wrong.messages.create(model=MODEL, max_tokens=16, messages=QUESTION)
        assert caught.value.body["error"]["type"] == "authentication_error"
    with sdk_client(server, "h2c", api_key="sk-sluice-right") as right:
        assert right.messages.create(model=MODEL, max_tokens=16, messages=QUESTION).content
    # The bearer form works too (curl users, other SDKs' auth_token).
    response = httpx.post(f"http://{server.host}:{server.port}/v1/messages",
                          headers={"authorization": "Bearer sk-sluice-right"},
                          json={"model": MODEL, "max_tokens": 16, "messages": QUESTION})
    assert response.status_code == 200 and response.json()["type"] == "message"


def test_count_tokens_with_a_wrong_key_is_authentication_error(start_server, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("sk-sluice-right\n")
    server = start_server("--keys-file", str(keys))
    with sdk_client(server, "h2c", api_key="sk-sluice-wrong") as wrong:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            wrong.messages.count_tokens(model=MODEL, messages=QUESTION)
        assert caught.value.body["error"]["type"] == "authentication_error"
    with sdk_client(server, "h2c", api_key="sk-sluice-right") as right:
        assert right.messages.count_tokens(model=MODEL, messages=QUESTION).input_tokens > 0
    response = httpx.post(f"http://{server.host}:{server.port}/v1/messages/count_tokens",
                          headers={"authorization": "Bearer sk-sluice-right", "anthropic-version": "2023-06-01"},
                          json={"model": MODEL, "messages": QUESTION})
    assert response.status_code == 200 and response.json()["input_tokens"] > 0
    wrong_method = httpx.get(f"http://{server.host}:{server.port}/v1/messages/count_tokens",
                             headers={"authorization": "Bearer sk-sluice-right"})
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "invalid_request_error"


def test_count_tokens_without_an_upstream_is_overloaded_error(start_server):
    # A port bound but not listening refuses connections, and nothing else can take it while the test runs.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        server = start_server("--upstream-url", f"http://127.0.0.1:{closed.getsockname()[1]}", "--upstream-is-simulator")
        with sdk_client(server, "h2c") as client:
            with pytest.raises(anthropic.APIStatusError) as caught:
                client.messages.count_tokens(model=MODEL, messages=QUESTION)
            assert caught.value.status_code == 529
            assert caught.value.body["error"]["type"] == "overloaded_error"
            assert "count_tokens" in caught.value.body["error"]["message"]


def test_full_server_is_rate_limit_error(start_server):
    server = start_server("--max-active", "1", "--max-queued", "0")
    # HTTP/1.1: leaving a stream early closes its connection (httpx does not reset an HTTP/2 stream it stops reading).
    with sdk_client(server, "http1") as client:
        with client.messages.stream(model=MODEL, max_tokens=256, messages=QUESTION,
                                    extra_body=simulation(seed=12, output_tokens=50, token_interval_ms=200)) as holding:
            next(event for event in holding if event.type == "content_block_delta")
            with pytest.raises(anthropic.RateLimitError) as caught:
                client.messages.create(model=MODEL, max_tokens=16, messages=QUESTION)
            assert caught.value.status_code == 429
            assert caught.value.response.headers["retry-after"] == "1"
            assert caught.value.body["error"]["type"] == "rate_limit_error"
        # Leaving the stream early cancels it upstream and frees the slot (the SDK's retry covers the moment
        # between the client leaving and the job ending).
        assert client.with_options(max_retries=5).messages.create(model=MODEL, max_tokens=16, messages=QUESTION).content


def test_queued_stream_gets_pings_then_its_answer(start_server):
    server = start_server("--max-active", "1", "--max-queued", "1")
    with sdk_client(server, "h2c") as client:
        with client.messages.stream(model=MODEL, max_tokens=256, messages=QUESTION,
                                    extra_body=simulation(seed=13, output_tokens=10, token_interval_ms=100)) as holding:
            next(event for event in holding if event.type == "content_block_delta")
            url = f"http://{server.host}:{server.port}/v1/messages"
            with httpx.Client(http2=True, http1=False) as http:
                with http.stream("POST", url, headers={"x-api-key": "test"},
                                 json={"model": MODEL, "max_tokens": 16, "messages": QUESTION, "stream": True}) as queued:
                    assert queued.status_code == 200
                    lines = queued.iter_lines()
                    assert next(lines) == "event: ping"  # sent while it waits in the queue
                    holding.close()
                    rest = list(lines)
            assert "event: message_stop" in rest


def test_restart_after_content_ends_with_overloaded_error(start_server):
    """With thinking enabled a dropped stream cannot be continued by prefill: Sluice restarts upstream, which the
    API's format cannot express once content went out, so the SDK gets the API's own mid-stream error."""
    server = start_server()
    body = {"model": MODEL, "max_tokens": 4096, "messages": QUESTION, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    scenario = {"seed": 14, "thinking_tokens": 20, "output_tokens": 40, "fault": {"kind": "drop", "after_events": 30, "times": 1}}
    with sdk_client(server, "h2c") as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            with client.messages.stream(**body, extra_body=simulation(**scenario)) as stream:
                for _ in stream:
                    pass
        assert "overloaded_error" in str(caught.value)
        metrics = httpx.get(f"http://{server.host}:{server.port}/metrics").text
        assert re.search(r'^sluice_messages_restarts_total\{visible="true"\} 1(\.0)?$', metrics, re.M), metrics
        # A drop before anything reached the client restarts invisibly.
        early = {**scenario, "fault": {"kind": "drop", "after_events": 1, "times": 1}}
        clean = client.messages.create(**body, extra_body=simulation(**{k: v for k, v in scenario.items() if k != "fault"}))
        with client.messages.stream(**body, extra_body=simulation(**early)) as stream:
            final = stream.get_final_message()
        assert [block.model_dump() for block in final.content] == [block.model_dump() for block in clean.content]


def test_draining_server_answers_overloaded(start_server):
    server = start_server("--drain-timeout", "2s")
    request = json.dumps({"model": MODEL, "max_tokens": 64, "messages": QUESTION, "stream": True,
                          "simulation": {"seed": 15, "output_tokens": 30, "token_interval_ms": 100}}).encode()
    with FrameClient(server.port) as frames:
        holding = frames.start("/v1/messages", request, content_type="application/json")
        frames.wait_for(lambda: b"content_block_delta" in frames.streams[holding].data)
        server.signal(signal.SIGTERM)
        frames.wait_for(lambda: frames.goaways)
        late = frames.start("/v1/messages", request, content_type="application/json")
        frames.wait_for(lambda: frames.streams[late].closed or len(frames.goaways) > 1 and frames.goaways[-1].last_stream_id < late)
        if not frames.streams[late].closed:
            pytest.skip("the request reached the server after its final GOAWAY, so it was never processed (a slow test host)")
        result = frames.streams[late]
    assert result.headers[":status"] == "529", result.header_blocks
    assert json.loads(bytes(result.data))["error"]["type"] == "overloaded_error"


def test_oversized_request_is_request_too_large(start_server, tls_cert, transport):
    """The transport refuses a body over --max-message-size before any handler runs; on this route it answers in
    the API's shape, so the SDK raises its RequestTooLargeError with the API's body."""
    server = start_server("--max-message-size", "4096", tls=transport == "tls")
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 8192}}
    oversized = [{"role": "user", "content": [image]}]
    with sdk_client(server, transport, tls_cert) as client:
        with pytest.raises(anthropic.RequestTooLargeError) as caught:
            client.messages.create(model=MODEL, max_tokens=16, messages=oversized)
        assert caught.value.status_code == 413
        assert caught.value.response.headers["content-type"] == "application/json"
        assert caught.value.body["type"] == "error"
        assert caught.value.body["error"]["type"] == "request_too_large"
        assert "4096 bytes" in caught.value.body["error"]["message"]
        assert "--max-message-size" in caught.value.body["error"]["message"]
        with pytest.raises(anthropic.RequestTooLargeError):
            with client.messages.stream(model=MODEL, max_tokens=16, messages=oversized) as stream:
                stream.get_final_message()
        with pytest.raises(anthropic.RequestTooLargeError) as counting:
            client.messages.count_tokens(model=MODEL, messages=oversized)
        assert counting.value.body["error"]["type"] == "request_too_large"
        assert client.messages.create(model=MODEL, max_tokens=16, messages=QUESTION).content  # still serving


@pytest.mark.parametrize("curl_args", [["-H", "expect: 100-continue"], ["-H", "transfer-encoding: chunked"],
                                       ["--http2-prior-knowledge"]], ids=["expect-continue", "chunked", "h2c"])
def test_oversized_body_is_request_too_large_however_it_is_sent(start_server, tmp_path, curl_args):
    """Refused when the declared length is over the limit (before the body: 100-continue), while a chunked body
    arrives, or in HTTP/2 DATA: the same JSON 413 each way."""
    server = start_server("--max-message-size", "4096")
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "a" * 9000}]}))
    result = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *curl_args, "-H", "content-type: application/json",
                             "--data-binary", f"@{body}", f"http://{server.host}:{server.port}/v1/messages"],
                            capture_output=True, text=True, timeout=30)
    text, _, status = result.stdout.rpartition("\n")
    assert status == "413", result
    assert json.loads(text)["error"]["type"] == "request_too_large"


# MARK: Sluice's server tools (--messages-server-tools)

def test_server_tools_are_refused_unless_offered(start_server, tmp_path):
    server = start_server("--tool-root", str(tmp_path), "--messages-server-tools", "list_directory")
    with sdk_client(server, "h2c") as client:
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.create(model=MODEL, max_tokens=64, messages=QUESTION, tools=["read_file"])
        message = caught.value.body["error"]["message"]
        assert caught.value.body["error"]["type"] == "invalid_request_error"
        assert "'read_file' is not offered" in message and "--messages-server-tools read_file" in message
        assert client.messages.create(model=MODEL, max_tokens=16, messages=QUESTION).content  # still serving


def test_server_tools_are_refused_by_default(start_server):
    server = start_server()
    with sdk_client(server, "h2c") as client:
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.create(model=MODEL, max_tokens=64, messages=QUESTION, tools=["read_file"])
        assert "none are" in caught.value.body["error"]["message"]
        assert "--messages-server-tools read_file" in caught.value.body["error"]["message"]


def test_offered_server_tools_run_in_sluice_as_server_tool_blocks(start_server, tmp_path):
    """The model calls two of Sluice's tools; they run in Sluice, and the SDK gets one message: the first turn's
    text, a server_tool_use block per call, their <name>_tool_result blocks, and the final turn's text."""
    root = tmp_path / "root"
    root.mkdir()
    notes = "SERVER-TOOL notes: streams resume.\n"
    (root / "notes.txt").write_text(notes)
    server = start_server("--tool-root", str(root), "--messages-server-tools", "read_file,list_directory")
    scenario = {"seed": 21, "output_tokens": 12, "tool_calls": [
        {"name": "read_file", "input": {"path": "notes.txt"}}, {"name": "list_directory", "input": {"path": "missing"}}]}
    body = {"model": MODEL, "max_tokens": 1024, "messages": QUESTION, "tools": ["read_file", "list_directory"]}
    expected_output = {"type": "read_file_result", "path": "notes.txt", "offset": 0, "bytes": len(notes), "content": notes}
    with sdk_client(server, "h2c") as client:
        with client.messages.stream(**body, extra_body=simulation(**scenario)) as stream:
            streamed_text = "".join(stream.text_stream)
            final = stream.get_final_message()
        created = client.messages.create(**body, extra_body=simulation(**scenario))
        for message in (final, created):
            # The tools run in parallel: each result follows its own call, in the order they finish.
            types = [block.type for block in message.content]
            assert types[0] == "text" and types[-1] == "text" and len(types) == 6, types
            assert sorted(types[1:5]) == ["list_directory_tool_result", "read_file_tool_result"] + ["server_tool_use"] * 2
            uses = {block.name: block for block in message.content if block.type == "server_tool_use"}
            assert uses["read_file"].input == {"path": "notes.txt"}
            results = {block.type: block.model_dump() for block in message.content[1:5] if block.type != "server_tool_use"}
            for name, use in uses.items():
                assert types.index(f"{name}_tool_result") > message.content.index(use), types
            read = results["read_file_tool_result"]
            assert read["tool_use_id"] == uses["read_file"].id and read["content"] == expected_output
            failed = results["list_directory_tool_result"]
            assert failed["tool_use_id"] == uses["list_directory"].id
            assert failed["content"]["type"] == "list_directory_tool_result_error"
            assert failed["content"]["error_code"] == "execution_error" and "missing" in failed["content"]["error_message"]
            assert message.stop_reason == "end_turn"
            # The final turn quotes what read_file returned (the simulator's second turn echoes tool results).
            assert "SERVER-TOOL notes" in message.content[-1].text
        assert streamed_text == final.content[0].text + final.content[-1].text
        assert created.content[-1].text == final.content[-1].text

        # The conversation goes on with those blocks in it, sent back as the SDK gave them: the upstream gets its own
        # tool_use / tool_result form (the simulator then quotes the tool results it was given).
        follow_up = QUESTION + [
            {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in final.content[:-1]]}]
        answer = client.messages.create(model=MODEL, max_tokens=1024, messages=follow_up, tools=["read_file", "list_directory"],
                                        extra_body=simulation(seed=22, output_tokens=8))
        assert answer.stop_reason == "end_turn"
        read_use = next(block for block in final.content if block.type == "server_tool_use" and block.name == "read_file")
        assert f"`read_file` tool ({read_use.id}) returned: " in answer.content[0].text
        assert "SERVER-TOOL notes" in answer.content[0].text

        # count_tokens takes the same body: the offered tools are counted as the definitions the model gets.
        plain = client.messages.count_tokens(model=MODEL, messages=QUESTION).input_tokens
        with_tools = client.messages.count_tokens(model=MODEL, messages=QUESTION, tools=["read_file", "list_directory"])
        assert with_tools.input_tokens > plain
        assert client.messages.count_tokens(model=MODEL, messages=follow_up, tools=["read_file"]).input_tokens > plain
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.count_tokens(model=MODEL, messages=QUESTION, tools=["search_files"])
        assert "--messages-server-tools search_files" in caught.value.body["error"]["message"]


# MARK: Metrics: the route label

def test_metrics_carry_the_route(start_server):
    """One stream per route, and a Connect unary call: the engine's per-stream series and the request counter carry
    `route` (rpc, sse, messages)."""
    server = start_server()
    base = f"http://{server.host}:{server.port}"
    with SluiceClient(server.port) as rpc:
        outcome = rpc.send_message(send_request(seed=31, output_tokens=5))
    assert outcome.code == "OK"
    cancelled = httpx.post(f"{base}/sluice.v1.StreamingService/Cancel", json={"stream_id": outcome.stream_id})
    assert cancelled.status_code == 200, cancelled.text  # Connect unary over HTTP/1.1
    created = httpx.post(f"{base}/v1/streams", json=send_request(seed=32, output_tokens=5))
    assert created.status_code == 201, created.text
    events = httpx.get(f"{base}/v1/streams/{created.json()['stream_id']}/events")
    assert "event: stream_complete" in events.text
    with sdk_client(server, "h2c") as client:
        assert client.messages.create(model=MODEL, max_tokens=16, messages=QUESTION,
                                      extra_body=simulation(seed=33, output_tokens=5)).content

    def labelled(metrics) -> bool:
        return all(metrics.counter("sluice_streams_completed_total", route=route, status="OK") == 1
                   for route in ("rpc", "sse", "messages"))
    metrics = wait_for_metrics(server.port, labelled, "one OK stream per route")
    for route in ("rpc", "sse", "messages"):
        assert metrics.counter("sluice_time_to_first_token_seconds_count", route=route) == 1, route
    assert metrics.counter("sluice_streams_completed_total") == 3
    # SendMessage and the Connect unary Cancel; the SSE POST and GET; the one /v1/messages call.
    assert metrics.counter("sluice_requests_total", route="rpc") == 2
    assert metrics.counter("sluice_requests_total", route="sse") == 2
    assert metrics.counter("sluice_requests_total", route="messages") == 1
