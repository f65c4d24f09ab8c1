"""All of Claude through the stream: client tools, extended thinking, images, stop sequences, citations,
hosted web search, include_message and prompt-cache usage, over grpcio against `sluice serve` on its
simulator; the retry rules for the new block types under injected drops; and the official `anthropic` SDK
against `sluice simulate` for the same features.

Every event goes through streaming_testlib, which validates it against schema/stream_event.schema.json as
it is read; whole calls are checked for seq 1..n, first and last event and status.
"""

from __future__ import annotations

import base64
import json
import subprocess

import anthropic
import pytest

from streaming_testlib import MODEL, REQUEST_VALIDATOR, SluiceClient, send_request
from test_anthropic_sdk import MODEL as SDK_MODEL
from test_anthropic_sdk import http_client, scenario, simulator_url, without_none  # noqa: F401 (fixture)

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
WEATHER_INPUT = {"city": "São Paulo 😀 \"centre\"", "days": 9007199254740993}
THINKING = {"type": "enabled", "budget_tokens": 2048}
# A 1×1 PNG.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cfc0f01f0005000"
    "1ff5c0c2a7a0000000049454e44ae426082")).decode()


@pytest.fixture
def client(start_server):
    server = start_server()
    with SluiceClient(server.port) as client:
        yield client


def request(prompt="What is the weather in São Paulo?", **fields) -> dict:
    simulation = fields.pop("simulation", {"seed": 7, "output_tokens": 24})
    body = {"model": MODEL, "max_tokens": 4096, "messages": [{"role": "user", "content": prompt}],
            "simulation": simulation, **fields}
    REQUEST_VALIDATOR.validate(body)
    return body


def assistant_turn(events: list[dict]) -> list[dict]:
    """The assistant content a backend rebuilds from the events (what include_message gives directly)."""
    return next(e for e in events if e["type"] == "stream_complete")["message"]["content"]


# MARK: Features over grpcio


def test_client_tool_round_trip(client):
    first = client.send_message(request(
        tools=[WEATHER_TOOL], include_message=True,
        simulation={"seed": 7, "output_tokens": 24, "tool_calls": [{"name": "get_weather", "input": WEATHER_INPUT}]}))
    assert first.code == "OK", first
    calls = first.of_type("tool_call")
    assert len(calls) == 1
    call = calls[0]
    assert call["name"] == "get_weather" and call["input"] == WEATHER_INPUT
    assert call["tool_use_id"].startswith("toolu_")
    fragments = [e["partial_json"] for e in first.of_type("tool_call_delta")]
    assert len(fragments) > 3 and json.loads("".join(fragments)) == WEATHER_INPUT
    assert first.of_type("message_stop")[-1]["stop_reason"] == "tool_use"
    assert first.types[-1] == "stream_complete"
    assert not first.of_type("tool_start"), "Sluice never runs a client tool"

    history = [{"role": "user", "content": "What is the weather in São Paulo?"},
               {"role": "assistant", "content": assistant_turn(first.events)},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["tool_use_id"],
                                             "content": "23 °C, sunny"}]}]
    second = client.send_message(request(tools=[WEATHER_TOOL], simulation={"seed": 7, "output_tokens": 24},
                                         messages=history))
    assert second.code == "OK", second
    assert "23 °C, sunny" in second.text and call["tool_use_id"] in second.text
    assert second.of_type("message_stop")[-1]["stop_reason"] == "end_turn"


def test_thinking_with_signature_passed_back(client):
    first = client.send_message(request(thinking=THINKING, include_message=True,
                                        simulation={"seed": 3, "output_tokens": 20, "thinking_tokens": 30}))
    assert first.code == "OK", first
    thinking = "".join(e["delta"] for e in first.of_type("thinking_delta"))
    signature = first.of_type("thinking_signature")[0]["signature"]
    assert thinking and signature
    assert first.types.index("thinking_signature") < first.types.index("message_delta")
    content = assistant_turn(first.events)
    assert content[0] == {"type": "thinking", "thinking": thinking, "signature": signature}
    history = [{"role": "user", "content": "What is the weather in São Paulo?"},
               {"role": "assistant", "content": content},
               {"role": "user", "content": "And tomorrow?"}]
    second = client.send_message(request(thinking=THINKING, messages=history,
                                         simulation={"seed": 3, "output_tokens": 20, "thinking_tokens": 30}))
    assert second.code == "OK", second
    assert second.of_type("thinking_signature")


def test_image_block_counts_as_input(client):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG * 20}}
    with_image = client.send_message(request(prompt=[image, {"type": "text", "text": "What is this?"}]))
    without = client.send_message(request(prompt=[{"type": "text", "text": "What is this?"}]))
    assert with_image.code == without.code == "OK"
    assert with_image.events[-1]["usage"]["input_tokens"] > without.events[-1]["usage"]["input_tokens"] + 400


def test_stop_sequences(client):
    reference = client.send_message(request(simulation={"seed": 11, "output_tokens": 60})).text
    word = reference.split()[5]
    stopped = client.send_message(request(stop_sequences=[word], simulation={"seed": 11, "output_tokens": 60}))
    stop = stopped.of_type("message_stop")[-1]
    assert stop["stop_reason"] == "stop_sequence" and stop["stop_sequence"] == word
    assert reference.startswith(stopped.text) and word not in stopped.text


def test_citations_and_web_search(client):
    document = {"type": "document", "title": "Guide", "citations": {"enabled": True},
                "source": {"type": "text", "media_type": "text/plain", "data": "Streams carry events in order."}}
    cited = client.send_message(request(prompt=[document, {"type": "text", "text": "What do streams carry?"}]))
    citation = cited.of_type("citation")[0]
    assert citation["citation"]["type"] == "char_location"
    assert citation["citation"]["cited_text"] == "Streams carry events in order."

    searched = client.send_message(request(tools=[{"type": "web_search_20250305", "name": "web_search"}],
                                           include_message=True))
    blocks = searched.of_type("content_block")
    assert [b["block"]["type"] for b in blocks] == ["server_tool_use", "web_search_tool_result"]
    assert blocks[0]["block"]["input"] == {"query": "What is the weather in São Paulo?"}
    assert [b["index"] for b in blocks] == [0, 1]
    assert searched.of_type("citation")[0]["citation"]["type"] == "web_search_result_location"
    assert searched.events[-1]["usage"]["server_tool_use"] == {"web_search_requests": 1}
    assert [b["type"] for b in assistant_turn(searched.events)] == ["server_tool_use", "web_search_tool_result", "text"]


def test_include_message_equals_the_simulators_non_streaming_message(client, simulator_url):  # noqa: F811
    simulation = {"seed": 5, "output_tokens": 30, "thinking_tokens": 12,
                  "tool_calls": [{"name": "get_weather", "input": WEATHER_INPUT}]}
    body = request(tools=[WEATHER_TOOL], thinking=THINKING, include_message=True, simulation=simulation)
    outcome = client.send_message(body)
    message = outcome.events[-1]["message"]
    upstream = {key: value for key, value in body.items() if key not in ("simulation", "include_message")}
    with http_client() as http:
        whole = http.post(f"{simulator_url}/v1/messages", json=upstream,
                          headers={"x-api-key": "test", "sluice-simulation": json.dumps(simulation)})
    assert whole.status_code == 200, whole.text
    assert message == whole.json()


def test_cache_usage_fields(client):
    system = [{"type": "text", "text": "Stable instructions. " * 60, "cache_control": {"type": "ephemeral"}}]
    first = client.send_message(request(system=system))
    second = client.send_message(request(system=system))
    written = first.events[-1]["usage"]["cache_creation_input_tokens"]
    assert written > 200 and first.events[-1]["usage"]["cache_read_input_tokens"] == 0
    assert second.events[-1]["usage"]["cache_read_input_tokens"] == written
    assert second.events[-1]["usage"]["cache_creation_input_tokens"] == 0


def test_unknown_fields_pass_through_and_tool_name_clash_is_refused(client):
    outcome = client.send_message(request(top_k=5, service_tier="auto", some_future_parameter={"x": 1}))
    assert outcome.code == "OK", outcome
    clash = client.send_message(request(tools=[{"name": "read_file", "input_schema": {"type": "object"}}]), shape=False)
    assert clash.code == "INVALID_ARGUMENT" and "read_file" in clash.details


# MARK: Retry rules


def retry_of(outcome) -> dict:
    retries = outcome.of_type("upstream_retry")
    assert len(retries) == 1, outcome.types
    return retries[0]


@pytest.mark.parametrize("case", ["thinking", "text_after_thinking", "tool_input"])
def test_a_drop_restarts_when_prefill_is_impossible(client, case):
    simulation = {"seed": 9, "output_tokens": 30}
    fields = {}
    if case == "tool_input":
        fields["tools"] = [WEATHER_TOOL]
        simulation.update(tool_preamble=False, tool_calls=[{"name": "get_weather", "input": WEATHER_INPUT}])
        after = 5  # message_start, ping, content_block_start, the empty fragment, one more fragment
    else:
        fields["thinking"] = THINKING
        simulation["thinking_tokens"] = 12
        after = 4 if case == "thinking" else 16
    clean = client.send_message(request(simulation=simulation, **fields))
    faulty = client.send_message(request(simulation={**simulation, "fault": {"kind": "drop", "after_events": after,
                                                                             "times": 1}}, **fields))
    assert faulty.code == "OK", faulty
    assert retry_of(faulty)["mode"] == "restart"
    restart = faulty.types.index("message_restart")
    if case == "text_after_thinking":
        assert "message_delta" in faulty.types[:restart], "the drop came during the text"
    after_restart = faulty.events[restart + 1:]
    kinds = lambda events: [e["type"] for e in events if e["type"] not in ("upstream_retry", "message_restart")]  # noqa: E731
    assert kinds(after_restart) == kinds(clean.events[1:])
    assert faulty.text == clean.text
    if case == "tool_input":
        assert [e["input"] for e in faulty.of_type("tool_call")] == [WEATHER_INPUT]


def test_a_drop_in_plain_text_continues_without_repeats(client):
    simulation = {"seed": 13, "output_tokens": 60}
    clean = client.send_message(request(simulation=simulation))
    faulty = client.send_message(request(simulation={**simulation, "fault": {"kind": "drop", "after_events": 12,
                                                                             "times": 1}}))
    assert retry_of(faulty)["mode"] == "continue"
    assert "message_restart" not in faulty.types
    assert faulty.text == clean.text


# MARK: The official SDK against `sluice simulate`


@pytest.fixture
def sdk(simulator_url):  # noqa: F811
    with anthropic.Anthropic(base_url=simulator_url, api_key="test", http_client=http_client(), max_retries=0) as sdk:
        yield sdk


SDK_CASES = {
    "thinking": ({"thinking": THINKING}, {"seed": 1, "thinking_tokens": 30, "output_tokens": 20},
                 {"ThinkingEvent", "SignatureEvent", "TextEvent"}),
    "tool_use": ({"tools": [WEATHER_TOOL]}, {"seed": 2, "tool_calls": [{"name": "get_weather", "input": WEATHER_INPUT}]},
                 {"InputJsonEvent"}),
    "citations": ({"messages": [{"role": "user", "content": [
        {"type": "document", "citations": {"enabled": True}, "title": "Guide",
         "source": {"type": "text", "media_type": "text/plain", "data": "Streams carry events in order."}},
        {"type": "text", "text": "What do streams carry?"}]}]}, {"seed": 3}, {"CitationEvent"}),
    "web_search": ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, {"seed": 4}, {"CitationEvent"}),
    "stop_sequence": ({"stop_sequences": ["e"]}, {"seed": 5}, {"TextEvent"}),
}


@pytest.mark.parametrize("case", SDK_CASES)
def test_sdk_accumulates_what_the_simulator_answers_whole(sdk, case):
    fields, simulation, expected_events = SDK_CASES[case]
    body = {"model": SDK_MODEL, "max_tokens": 4096, "messages": [{"role": "user", "content": "Tell me about streams."}],
            **fields}
    headers = scenario(**simulation)
    seen = set()
    with sdk.messages.stream(**body, extra_headers=headers) as stream:
        for event in stream:
            seen.add(type(event).__name__)
        final = stream.get_final_message()
    created = sdk.messages.create(**body, extra_headers=headers)
    assert without_none(final.model_dump()) == without_none(created.model_dump())
    assert expected_events <= seen, seen
    if case == "stop_sequence":
        assert created.stop_reason == "stop_sequence" and created.stop_sequence == "e"


# MARK: sluice call


def test_sluice_call_prints_a_client_tool_call_and_shows_thinking(start_server, sluice_bin, tmp_path):
    server = start_server()
    target = ["--target", f"http://127.0.0.1:{server.port}"]
    definition = tmp_path / "weather.json"
    definition.write_text(json.dumps(WEATHER_TOOL))
    simulation = json.dumps({"seed": 2, "tool_calls": [{"name": "get_weather", "input": WEATHER_INPUT}]})
    result = subprocess.run([sluice_bin, "call", *target, "--tool-def", str(definition), "--simulation", simulation,
                             "weather?"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    call = json.loads(result.stdout.strip().splitlines()[-1])
    assert call["type"] == "tool_call" and call["name"] == "get_weather" and call["input"] == WEATHER_INPUT
    assert "stop reason tool_use" in result.stderr

    image, document = tmp_path / "pixel.png", tmp_path / "guide.txt"
    image.write_bytes(base64.b64decode(PNG))
    document.write_text("Streams carry events in order.")
    result = subprocess.run([sluice_bin, "call", *target, "--thinking", "1024", "--max-tokens", "2048", "--image",
                             str(image), "--document", str(document), "--simulation",
                             json.dumps({"seed": 2, "thinking_tokens": 10, "output_tokens": 10}), "what is this?"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("Thinking: ")
    assert "[1] “Streams carry events in order.” — guide.txt" in result.stdout

    bad = subprocess.run([sluice_bin, "call", *target, "--tool-def", str(tmp_path / "missing.json"), "x"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 64 and "missing.json" in bad.stderr


# MARK: Errors


def test_an_oversized_image_names_the_size_limit(start_server):
    server = start_server("--max-message-size", "20000")
    with SluiceClient(server.port) as client:
        image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 30000}}
        outcome = client.send_message(request(prompt=[image, {"type": "text", "text": "What is this?"}]), shape=False)
        assert outcome.code == "RESOURCE_EXHAUSTED"
        assert "--max-message-size" in outcome.details and "image" in outcome.details, outcome.details
        assert client.send_message(request()).code == "OK", "the server keeps serving"


def test_the_upstreams_400_is_invalid_argument_with_its_message(client):
    outcome = client.send_message(request(thinking={"type": "enabled", "budget_tokens": 100}), shape=False)
    assert outcome.code == "INVALID_ARGUMENT", outcome
    assert "budget_tokens" in outcome.details and "1024" in outcome.details
    assert outcome.types[-1] == "stream_error"


def test_a_cancel_during_a_tool_calls_input_ends_the_stream(client):
    simulation = {"seed": 3, "token_interval_ms": 200, "tool_preamble": False,
                  "tool_calls": [{"name": "get_weather", "input": {"city": "x" * 400}}]}
    reader = client.start(request(tools=[WEATHER_TOOL], simulation=simulation))
    while reader.take(1)[0]["type"] != "tool_call_delta":
        pass
    client.cancel(reader.events[0]["stream_id"])
    outcome = reader.finish()
    assert outcome.code == "CANCELLED"
    assert not outcome.of_type("tool_call")


# MARK: Server-Sent Events


def test_the_sse_routes_carry_the_same_claude_frames(start_server):
    from test_sse import http_client as sse_client, post_stream, read_events, rpc_frames

    server = start_server()
    simulation = {"seed": 6, "output_tokens": 10, "thinking_tokens": 10,
                  "tool_calls": [{"name": "get_weather", "input": WEATHER_INPUT}]}
    with sse_client() as http:
        stream_id = post_stream(http, server.port, request(tools=[WEATHER_TOOL], thinking=THINKING,
                                                            include_message=True, simulation=simulation))
        events = read_events(http, server.port, stream_id)  # each validated against the schema
    types = [e["type"] for e in events]
    assert {"thinking_delta", "thinking_signature", "tool_call_delta", "tool_call"} <= set(types)
    assert events[-1]["message"]["stop_reason"] == "tool_use"
    assert [json.loads(frame) for frame in rpc_frames(server.port, stream_id)] == events
