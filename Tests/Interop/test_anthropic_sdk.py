"""The official `anthropic` Python SDK against `sluice simulate` over h2c (HTTP/2 prior knowledge).

The oracle shared with the Swift tests: for the same request and seed the simulator's non-streaming response
is the Message that accumulating its stream must give. Here the SDK's stream helper
(`stream.get_final_message()`) must equal `messages.create(...)`, and an independent accumulation of the raw
SSE bytes (fetched with the same HTTP client) must equal both.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import anthropic
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "claude-sim-1"
QUESTION = [{"role": "user", "content": "Tell me how streams resume."}]
TOOLS = [{
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}, {
    "name": "get_time",
    "description": "Current time.",
    "input_schema": {"type": "object", "properties": {}},
}]


# MARK: Fixtures

@pytest.fixture(scope="module")
def simulator_url(tmp_path_factory) -> str:
    """`sluice simulate --port 0` from SLUICE_BIN (default .build/debug/sluice); killed at teardown."""
    binary = os.environ.get("SLUICE_BIN") or str(REPO_ROOT / ".build" / "debug" / "sluice")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"sluice binary {binary} not found: run `swift build` or set SLUICE_BIN")
    stderr_path = tmp_path_factory.mktemp("simulator") / "stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen([binary, "simulate", "--port", "0"], stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        line = proc.stdout.readline().strip()  # pytest-timeout guards against a hang
        prefix = "sluice simulator listening on "
        if not line.startswith(prefix):
            proc.kill()
            pytest.fail(f"unexpected first line {line!r}; stderr: {stderr_path.read_text(errors='replace')}")
        host, _, port = line[len(prefix):].rpartition(":")
        yield f"http://{host}:{int(port)}"
        assert proc.poll() is None, f"simulator died: {stderr_path.read_text(errors='replace')}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def http_client() -> anthropic.DefaultHttpxClient:
    # http1=False on an http:// URL: HTTP/2 with prior knowledge (h2c).
    return anthropic.DefaultHttpxClient(http2=True, http1=False)


@pytest.fixture
def client(simulator_url):
    with anthropic.Anthropic(base_url=simulator_url, api_key="test", http_client=http_client(), max_retries=0) as client:
        yield client


@pytest.fixture
def raw_http():
    with http_client() as http:
        yield http


def scenario(**fields) -> dict[str, str]:
    return {"sluice-simulation": json.dumps(fields, separators=(",", ":"))}


# MARK: Helpers

def without_none(value):
    """model_dump() less the fields the SDK adds as None (citations, server_tool_use, …)."""
    if isinstance(value, dict):
        return {key: without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_none(item) for item in value]
    return value


def parse_sse(data: bytes) -> list[tuple[str, dict]]:
    """A minimal SSE parser for the simulator's output (`event:` + one `data:` line per event)."""
    events = []
    for block in data.decode("utf-8").split("\n\n"):
        if not block:
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def accumulate(events: list[tuple[str, dict]]) -> dict:
    """An independent accumulation of the documented stream events into a Message."""
    message, blocks, partial_json = None, [], {}
    for name, data in events:
        assert data["type"] == name
        if name == "message_start":
            message = dict(data["message"])
            assert message["content"] == [] and message["stop_reason"] is None
        elif name == "content_block_start":
            assert data["index"] == len(blocks)
            blocks.append(dict(data["content_block"]))
        elif name == "content_block_delta":
            delta, block = data["delta"], blocks[data["index"]]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                assert delta["type"] == "input_json_delta"
                partial_json.setdefault(data["index"], []).append(delta["partial_json"])
        elif name == "content_block_stop":
            fragments = partial_json.get(data["index"])
            if fragments is not None:
                assert fragments[0] == "", "the first input_json_delta is empty"
                blocks[data["index"]]["input"] = json.loads("".join(fragments) or "{}")
        elif name == "message_delta":
            message.update(data["delta"])
            message["usage"] = {**message["usage"], **data["usage"]}
        elif name == "message_stop":
            message["content"] = blocks
            return message
    raise AssertionError("no message_stop")


def raw_stream(http, url: str, body: dict, headers: dict) -> bytes:
    with http.stream("POST", f"{url}/v1/messages", json={**body, "stream": True},
                     headers={"x-api-key": "test", "anthropic-version": "2023-06-01", **headers}) as response:
        assert response.status_code == 200
        assert response.http_version == "HTTP/2"
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["request-id"].startswith("req_")
        return response.read()


def check_oracle(client, http, url: str, body: dict, headers: dict) -> dict:
    """SDK stream == SDK create == raw SSE accumulated; returns the message."""
    with client.messages.stream(**body, extra_headers=headers) as stream:
        streamed_text = "".join(stream.text_stream)
        final = stream.get_final_message()
    created = client.messages.create(**body, extra_headers=headers)
    final_dump, created_dump = without_none(final.model_dump()), without_none(created.model_dump())
    assert final_dump == created_dump
    assert streamed_text == "".join(block.text for block in final.content if block.type == "text")

    raw = raw_stream(http, url, body, headers)
    assert raw == raw_stream(http, url, body, headers), "same request and seed, same bytes"
    whole = http.post(f"{url}/v1/messages", json=body, headers={"x-api-key": "test", **headers})
    assert whole.status_code == 200 and whole.http_version == "HTTP/2"
    assert accumulate(parse_sse(raw)) == whole.json()
    assert without_none(whole.json()) == created_dump
    return created_dump


# MARK: Tests

def test_text_stream_matches_create_and_raw_bytes(client, raw_http, simulator_url):
    body = {"model": MODEL, "max_tokens": 1024, "messages": QUESTION}
    message = check_oracle(client, raw_http, simulator_url, body, scenario(seed=1, output_tokens=150))
    assert message["id"].startswith("msg_01")
    assert message["model"] == MODEL and message["role"] == "assistant" and message["type"] == "message"
    assert message["stop_reason"] == "end_turn"
    assert [block["type"] for block in message["content"]] == ["text"]
    assert 145 <= message["usage"]["output_tokens"] <= 153
    assert message["usage"]["input_tokens"] > 0
    # Another seed, other text.
    other = client.messages.create(**body, extra_headers=scenario(seed=2, output_tokens=150))
    assert other.content[0].text != message["content"][0]["text"]


def test_non_streaming_create_over_http2(client):
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=20, messages=QUESTION, system="Be brief.", extra_body={"temperature": 0.5},
        metadata={"user_id": "u-1"}, extra_headers=scenario(seed=3, output_tokens=100))
    assert raw.http_response.http_version == "HTTP/2"
    assert raw.headers["request-id"].startswith("req_")
    message = raw.parse()
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 20
    assert message.content[0].type == "text" and message.content[0].text


def test_tool_use_then_tool_results(client, raw_http, simulator_url):
    calls = [{"name": "get_weather", "input": {"city": "São Paulo", "days": [1, 2], "detail": {"wind": True}}},
             {"name": "get_time", "input": {}}]
    headers = scenario(seed=4, tool_calls=calls)
    body = {"model": MODEL, "max_tokens": 1024, "messages": QUESTION, "tools": TOOLS}
    message = check_oracle(client, raw_http, simulator_url, body, headers)
    assert message["stop_reason"] == "tool_use"
    assert [block["type"] for block in message["content"]] == ["text", "tool_use", "tool_use"]
    uses = message["content"][1:]
    assert [(use["name"], use["input"]) for use in uses] == [(call["name"], call["input"]) for call in calls]
    assert all(use["id"].startswith("toolu_01") for use in uses) and uses[0]["id"] != uses[1]["id"]

    # The raw input_json_delta fragments: the first empty, the rest splitting the JSON.
    with client.messages.stream(**body, extra_headers=headers) as stream:
        fragments = [event.delta.partial_json for event in stream
                     if event.type == "content_block_delta" and event.delta.type == "input_json_delta" and event.index == 1]
    assert fragments[0] == "" and len(fragments) > 3
    assert json.loads("".join(fragments)) == calls[0]["input"]

    # Second turn: the tool results are quoted verbatim (at most 200 characters).
    long_result = "x" * 150 + "y" * 100
    follow_up = QUESTION + [
        {"role": "assistant", "content": message["content"]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": uses[0]["id"], "content": "Sunny, 21 °C"},
            {"type": "tool_result", "tool_use_id": uses[1]["id"], "content": [{"type": "text", "text": long_result}]},
        ]},
    ]
    answer = check_oracle(client, raw_http, simulator_url, {**body, "messages": follow_up}, headers)
    assert answer["stop_reason"] == "end_turn"
    text = answer["content"][0]["text"]
    assert f"`get_weather` tool ({uses[0]['id']}) returned: Sunny, 21 °C" in text
    assert long_result[:200] + "…" in text and long_result[:201] not in text


def test_overloaded_529_raises_overloaded_error(client):
    headers = scenario(seed=5, fault={"kind": "http_status", "status": 529})
    with pytest.raises(anthropic.OverloadedError) as caught:
        client.messages.create(model=MODEL, max_tokens=64, messages=QUESTION, extra_headers=headers)
    assert caught.value.status_code == 529
    assert caught.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert caught.value.request_id == caught.value.response.headers["request-id"]
    with pytest.raises(anthropic.OverloadedError):
        with client.messages.stream(model=MODEL, max_tokens=64, messages=QUESTION, extra_headers=headers) as stream:
            stream.get_final_message()


def test_rate_limit_429_raises_rate_limit_error(client):
    headers = scenario(seed=6, fault={"kind": "http_status", "status": 429, "retry_after_s": 2})
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model=MODEL, max_tokens=64, messages=QUESTION, extra_headers=headers)
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.body["error"]["type"] == "rate_limit_error"


def test_other_statuses_map_to_sdk_errors(client):
    for status, error in [(400, anthropic.BadRequestError), (401, anthropic.AuthenticationError),
                          (500, anthropic.InternalServerError), (503, anthropic.InternalServerError)]:
        with pytest.raises(error) as caught:
            client.messages.create(model=MODEL, max_tokens=64, messages=QUESTION,
                                   extra_headers=scenario(fault={"kind": "http_status", "status": status}))
        assert caught.value.status_code == status


def test_first_k_attempts_fail_then_succeed(client, simulator_url):
    headers = scenario(seed=7, fault={"kind": "http_status", "status": 529, "times": 2})
    for _ in range(2):
        with pytest.raises(anthropic.OverloadedError):
            client.messages.create(model=MODEL, max_tokens=64, messages=QUESTION, extra_headers=headers)
    assert client.messages.create(model=MODEL, max_tokens=64, messages=QUESTION, extra_headers=headers).stop_reason == "end_turn"

    # The SDK's own retries (2 by default) get through a scenario failing twice.
    retrying = anthropic.Anthropic(base_url=simulator_url, api_key="test", http_client=http_client(), max_retries=2)
    with retrying:
        headers = scenario(seed=8, fault={"kind": "http_status", "status": 429, "retry_after_s": 0, "times": 2})
        with retrying.messages.stream(model=MODEL, max_tokens=64, messages=QUESTION, extra_headers=headers) as stream:
            assert stream.get_final_message().stop_reason == "end_turn"


def test_prefill_continues_with_exactly_the_rest(client):
    body = {"model": MODEL, "max_tokens": 1024, "messages": QUESTION}
    # A seed whose text has non-ASCII characters, to split around them too.
    for seed in range(100, 160):
        headers = scenario(seed=seed, output_tokens=60)
        full = client.messages.create(**body, extra_headers=headers).content[0].text
        if any(ord(c) > 0x7F for c in full):
            break
    special = [i for i, c in enumerate(full) if ord(c) > 0x7F]
    assert special
    splits = sorted({1, 5, len(full) // 2, len(full) - 1, special[0], special[0] + 1, special[-1], special[-1] + 1})
    for number, split in enumerate(splits):
        messages = QUESTION + [{"role": "assistant", "content": full[:split]}]
        if number % 2:
            with client.messages.stream(**{**body, "messages": messages}, extra_headers=headers) as stream:
                rest = "".join(stream.text_stream)
                assert stream.get_final_message().stop_reason == "end_turn"
        else:
            reply = client.messages.create(**{**body, "messages": messages}, extra_headers=headers)
            rest = "".join(block.text for block in reply.content)
        assert full[:split] + rest == full, f"split at {split}"


def test_error_event_mid_stream_raises(client):
    headers = scenario(seed=9, output_tokens=40, fault={"kind": "error_event", "after_events": 6})
    received = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(model=MODEL, max_tokens=64, messages=QUESTION, extra_headers=headers) as stream:
            for text in stream.text_stream:
                received.append(text)
    assert caught.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert received  # some text arrived before the error


def test_dropped_stream_resumes_with_prefill(client):
    body = {"model": MODEL, "max_tokens": 1024, "messages": QUESTION}
    headers = scenario(seed=10, output_tokens=80, fault={"kind": "drop", "after_events": 15, "times": 1})
    received = []
    with pytest.raises(Exception):  # the HTTP/2 stream is reset mid-way; the SDK does not retry mid-stream
        with client.messages.stream(**body, extra_headers=headers) as stream:
            for text in stream.text_stream:
                received.append(text)
    partial = "".join(received)
    assert partial
    # Resume as Sluice does: the partial text as an assistant prefill. This is the second attempt: it succeeds.
    resumed = client.messages.create(**{**body, "messages": QUESTION + [{"role": "assistant", "content": partial}]},
                                     extra_headers=headers)
    full = client.messages.create(**body, extra_headers=headers)
    assert partial + resumed.content[0].text == full.content[0].text
