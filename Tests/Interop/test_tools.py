"""Server tools end to end: `sluice serve --tool-root DIR` on its simulator, SendMessage with `tools`
and a simulator scenario whose first turn calls them (`simulation.tool_calls`).

Every event goes through streaming_testlib, which validates it against
schema/stream_event.schema.json as it is read; whole calls are checked for seq 1..n, first and last
event and status (`assert_stream_shape`). Timings are client receipt times (`time.monotonic()` when
grpcio hands the event over).

Files: the 50 MB file of the large-read tests is written once per module; the 1 GiB file of the
cancel and parallel tests (so a read lasts well over a second even in a release build) is written
once per module in a second tool root and deleted afterwards.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from sluice_testlib import GRPC_INVALID_ARGUMENT, FrameClient, SluiceServer
from streaming_testlib import (
    CANCEL_METHOD,
    TERMINAL_TYPES,
    SluiceClient,
    StreamOutcome,
    StreamReader,
    frame_send_message,
    scrape,
    send_request,
    to_json,
)

LINE = b"The quick brown fox jumps over the lazy dog 0123456789.\n"
BLOCK = LINE * ((1 << 20) // len(LINE))  # just under 1 MiB of text
LARGE_BYTES = 50 * 1000 * 1000
HUGE_BYTES = 1 << 30
MAX_PARALLEL_TOOLS = 4  # EngineConfiguration.maxParallelTools (not a flag)


def write_text_file(path: Path, size: int, first_line: bytes = b"") -> None:
    """`first_line`, then copies of LINE, `size` bytes in all (the last line may be cut short)."""
    with open(path, "wb") as file:
        file.write(first_line)
        left = size - len(first_line)
        while left > 0:
            file.write(BLOCK[:left])
            left -= min(left, len(BLOCK))


def read_file(path: str) -> dict:
    return {"name": "read_file", "input": {"path": path}}


def tool_request(*calls: dict, tools=("read_file",), seed: int = 0, output_tokens: int = 16) -> dict:
    """SendMessage enabling `tools`, whose simulated first turn makes `calls`."""
    request = send_request(seed, output_tokens, tool_calls=list(calls))
    request["tools"] = list(tools)
    return request


@dataclass
class Timed:
    at: float  # client receipt time
    event: dict


def read_until(reader: StreamReader, stop) -> list[Timed]:
    """Reads (and validates) events one by one, timestamped, through the first one for which
    `stop(event)` holds or the call's last event."""
    taken = []
    while True:
        event = reader.take(1)[0]
        taken.append(Timed(time.monotonic(), event))
        if stop(event) or event["type"] in TERMINAL_TYPES:
            return taken


def of_type(events: list[dict], kind: str, tool_id: str | None = None) -> list[dict]:
    return [e for e in events if e["type"] == kind and (tool_id is None or e["id"] == tool_id)]


def rejected_at_once(port: int, request: dict) -> tuple[int, str]:
    """(grpc-status, grpc-message) of a call the server must refuse before starting a stream:
    a trailers-only response (one HEADERS frame with END_STREAM, no DATA, so no events)."""
    with FrameClient(port) as frames:
        result = frames.wait_closed(frame_send_message(frames, request))
    assert result.trailers_only, f"not refused at once: {result.header_blocks}, {len(result.data)} data bytes"
    return result.grpc_status, result.grpc_message


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.fixture
def root(tmp_path) -> Path:
    directory = tmp_path / "root"
    directory.mkdir()
    return directory


@pytest.fixture(scope="module")
def huge_root(tmp_path_factory):
    """A second tool root holding huge.txt (1 GiB of text) and a hard link to it, huge-2.txt."""
    directory = tmp_path_factory.mktemp("huge-root")
    write_text_file(directory / "huge.txt", HUGE_BYTES)
    os.link(directory / "huge.txt", directory / "huge-2.txt")
    yield directory
    for name in ("huge.txt", "huge-2.txt"):
        (directory / name).unlink()


# MARK: 1. A 50 MB read streams its progress, and the model gets the file


@dataclass
class LargeRead:
    first_line: str
    timed: list[Timed]
    outcome: StreamOutcome
    stderr: str


@pytest.fixture(scope="module")
def large_read(sluice_bin, tmp_path_factory) -> LargeRead:
    """One stream reading a 50 MB UTF-8 file (about 50 s on a debug build), shared by the tests below."""
    directory = tmp_path_factory.mktemp("large")
    root = directory / "root"
    root.mkdir()
    first_line = f"LARGE-FILE-START {uuid.uuid4().hex}\n"
    write_text_file(root / "large.txt", LARGE_BYTES, first_line.encode())
    server = SluiceServer(sluice_bin, ["--tool-root", str(root)], directory / "sluice.stderr")
    try:
        with SluiceClient(server.port) as client:
            reader = client.start(tool_request(read_file("large.txt")))
            timed = read_until(reader, lambda e: False)
            outcome = reader.finish()  # the shape: seq 1..n, first and last event, status
        return LargeRead(first_line, timed, outcome, server.stderr())
    finally:
        server.kill()


@pytest.mark.timeout(300)
def test_large_read_streams_start_progress_complete(large_read):
    events = [t.event for t in large_read.timed]
    (start,) = of_type(events, "tool_start")
    assert start["name"] == "read_file"
    assert start["input"] == {"path": "large.txt"}, "tool_start must carry the complete parsed input"
    tool = start["id"]
    timed_progress = [t for t in large_read.timed if t.event["type"] == "tool_progress"]
    (complete,) = of_type(events, "tool_complete")
    assert not of_type(events, "tool_error")
    assert complete["id"] == tool
    assert {t.event["id"] for t in timed_progress} == {tool}
    seqs = [e["seq"] for e in events]
    assert seqs.index(start["seq"]) < seqs.index(timed_progress[0].event["seq"])
    assert timed_progress[-1].event["seq"] < complete["seq"]

    percentages = [t.event["percentage"] for t in timed_progress]
    assert percentages == sorted(percentages), f"percentages go backwards: {percentages}"
    assert percentages[-1] == 100
    assert len(set(percentages)) > 2, f"no progress between the ends: {percentages}"
    # The throttle: one update at once, then at most one per 100 ms, plus the final 100 %.
    runtime = timed_progress[-1].at - timed_progress[0].at
    assert len(timed_progress) <= 2 + 10 * runtime + 1, (
        f"{len(timed_progress)} tool_progress events in {runtime:.2f}s: more than 10 a second")

    output = complete["output"]
    assert output["path"] == "large.txt" and output["bytes"] == LARGE_BYTES
    assert output["content"].startswith(large_read.first_line)




@pytest.mark.timeout(300)
def test_large_read_result_reaches_the_model(large_read):
    outcome = large_read.outcome
    assert outcome.code == "OK", f"{outcome.code}: {outcome.details}"
    tool_results = outcome.text.split("`read_file` tool", 2)
    assert len(tool_results) == 3, f"the second turn does not quote the tool result: {outcome.text[-600:]!r}"
    # The simulator quotes the tool_result content (the output as JSON) verbatim, 200 characters of it.
    assert json.dumps(large_read.first_line)[1:-1] in tool_results[2]


def test_small_read_result_reaches_the_model(start_server, root):
    """The same loop with a small file: the second turn quotes the tool result."""
    text = f"SMALL-FILE {uuid.uuid4().hex}\nsecond line\n"
    (root / "small.txt").write_text(text)
    server = start_server("--tool-root", str(root))
    with SluiceClient(server.port) as client:
        outcome = client.send_message(tool_request(read_file("small.txt")))
    assert outcome.code == "OK", outcome.details
    assert outcome.types.count("message_start") == 2
    (complete,) = outcome.of_type("tool_complete")
    assert complete["output"] == {"path": "small.txt", "offset": 0, "bytes": len(text), "content": text}
    assert f"returned: {json.dumps(complete['output'], separators=(',', ':'), sort_keys=True)}" in outcome.text


# MARK: 2. Sandbox escapes


@dataclass
class Escape:
    path: str
    rule: str


@pytest.fixture
def escape_targets(tmp_path, root, monkeypatch):
    """Targets outside the root (or not regular files) holding `marker`; returns (marker, cases)."""
    marker = f"SECRET-{uuid.uuid4().hex}"
    (tmp_path / "outside.txt").write_text(f"{marker}\n")
    (root / "link.txt").symlink_to(tmp_path / "outside.txt")
    # A sibling whose name starts with the root's: a naive prefix check would let it through.
    (tmp_path / "root-evil").mkdir()
    (tmp_path / "root-evil" / "secret.txt").write_text(f"{marker}\n")
    # The server inherits this environment: /proc/self/environ holds the marker.
    monkeypatch.setenv("SLUICE_TOOLS_TEST_SECRET", marker)
    # A FIFO inside the root with the marker waiting in its buffer (our read-write end keeps it open).
    os.mkfifo(root / "pipe")
    fifo = os.open(root / "pipe", os.O_RDWR | os.O_NONBLOCK)
    os.write(fifo, f"{marker}\n".encode())
    outside = "resolves outside the tool roots (sandbox rule"
    cases = {
        "dotdot": Escape("../outside.txt", outside),
        "absolute": Escape(str(tmp_path / "outside.txt"), outside),
        "symlink": Escape("link.txt", outside),
        "sibling-prefix": Escape("../root-evil/secret.txt", outside),
        "proc-environ": Escape("/proc/self/environ", outside),
        "fifo": Escape("pipe", "is not a regular file (sandbox rule"),
    }
    yield marker, cases
    os.close(fifo)


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "sibling-prefix", "proc-environ", "fifo"])
def test_escape_is_a_tool_error_and_leaks_nothing(start_server, root, escape_targets, case):
    marker, cases = escape_targets
    escape = cases[case]
    server = start_server("--tool-root", str(root))
    with SluiceClient(server.port) as client:
        outcome = client.send_message(tool_request(read_file(escape.path)), timeout=30)

    assert outcome.code == "OK", f"the model should recover: {outcome.code} {outcome.details}"
    (start,) = outcome.of_type("tool_start")
    assert start["input"] == {"path": escape.path}
    (error,) = outcome.of_type("tool_error")
    assert error["id"] == start["id"]
    assert escape.rule in error["error"], error["error"]
    assert not outcome.of_type("tool_complete")
    assert marker not in json.dumps(outcome.events, ensure_ascii=False)
    # The model got the error as an is_error tool_result, and answered.
    assert f"failed with: {error['error'][:100]}" in outcome.text


def test_search_does_not_follow_a_symlinked_directory(start_server, tmp_path, root):
    marker = f"SECRET-{uuid.uuid4().hex}"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text(f"{marker}\n")
    (root / "inside.txt").write_text("nothing to see\n")
    (root / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    server = start_server("--tool-root", str(root))
    call = {"name": "search_files", "input": {"path": ".", "pattern": marker[:10]}}
    with SluiceClient(server.port) as client:
        outcome = client.send_message(tool_request(call, tools=["search_files"]))
    assert outcome.code == "OK", outcome.details
    (complete,) = outcome.of_type("tool_complete")
    assert complete["output"]["matches"] == [] and complete["output"]["files_scanned"] == 1
    assert marker not in json.dumps(outcome.events, ensure_ascii=False)


# MARK: 3. Cancel mid-tool


def cancel_mid_read(server: SluiceServer, paths: list[str]) -> tuple[list[Timed], float, StreamOutcome]:
    """Starts reads of `paths` in one turn, sends Cancel at the first tool_progress, reads to the end.
    Returns the timed events, the time Cancel was sent, and the call's outcome. The call's deadline
    and Cancel's are ours, against a server that stops answering: a prompt one needs milliseconds."""
    with SluiceClient(server.port) as client:
        cancel = client.channel.unary_unary(CANCEL_METHOD, request_serializer=to_json, response_deserializer=json.loads)
        reader = client.start(tool_request(*[read_file(p) for p in paths]), timeout=20)
        try:
            timed = read_until(reader, lambda e: e["type"] == "tool_progress")
        except grpc.RpcError as error:
            pytest.fail(f"no tool_progress before the call ended {error.code().name} ({error.details()}); "
                        f"events: {[e['type'] for e in reader.events]}")
        assert timed[-1].event["type"] == "tool_progress", "the stream ended before any tool progress"
        assert not of_type(reader.events, "tool_complete"), "a read finished before the cancel: use a bigger file"
        cancel_sent = time.monotonic()
        try:
            answer = cancel({"stream_id": reader.events[0]["stream_id"]}, timeout=2)
        except grpc.RpcError as error:
            pytest.fail(f"Cancel got {error.code().name} ({error.details()}) while {len(paths)} reads run")
        assert answer == {"stream_id": reader.events[0]["stream_id"], "cancelled": True}
        timed += read_until(reader, lambda e: False)
        return timed, cancel_sent, reader.finish()


CANCEL_BOUND_SECONDS = 0.5


def assert_cancelled_promptly(timed: list[Timed], cancel_sent: float, outcome: StreamOutcome) -> None:
    assert outcome.code == "CANCELLED", outcome.details
    assert outcome.events[-1]["type"] == "stream_error"
    # The read of a huge file lasts seconds; a tool that kept running would show progress long after this bound,
    # which is loose enough for a loaded 2-core CI machine (100 ms failed there under load).
    late = [(round(t.at - cancel_sent, 3), t.event["seq"]) for t in timed
            if t.event["type"] == "tool_progress" and t.at > cancel_sent + CANCEL_BOUND_SECONDS]
    assert not late, f"tool_progress (seconds after the cancel, seq) more than {CANCEL_BOUND_SECONDS} s after Cancel: {late}"


def test_cancel_mid_read_stops_the_tool(start_server, root, huge_root):
    """Observable: the SendMessage call's own events, timestamped as received (the Cancel RPC is
    sent on another HTTP/2 stream of the same channel), and the server's CPU time afterwards."""
    server = start_server("--tool-root", str(root), "--tool-root", str(huge_root),
                          "--tool-max-bytes", str(2 * HUGE_BYTES))
    timed, cancel_sent, outcome = cancel_mid_read(server, [str(huge_root / "huge.txt")])
    assert_cancelled_promptly(timed, cancel_sent, outcome)
    # The read itself stopped (it is not merely hidden): the server goes idle.
    before = cpu_seconds(server.pid)
    time.sleep(0.5)
    assert cpu_seconds(server.pid) - before < 0.2, "the server still burns CPU after the cancel"




def test_cancel_during_parallel_reads_is_prompt(start_server, root, huge_root):
    server = start_server("--tool-root", str(root), "--tool-root", str(huge_root),
                          "--tool-max-bytes", str(2 * HUGE_BYTES))
    paths = [str(huge_root / name) for name in ("huge.txt", "huge-2.txt")] * (MAX_PARALLEL_TOOLS // 2)
    timed, cancel_sent, outcome = cancel_mid_read(server, paths)
    assert_cancelled_promptly(timed, cancel_sent, outcome)




def test_cancel_mid_read_starts_no_new_turn(start_server, root, huge_root):
    server = start_server("--tool-root", str(root), "--tool-root", str(huge_root),
                          "--tool-max-bytes", str(2 * HUGE_BYTES))
    timed, cancel_sent, outcome = cancel_mid_read(server, [str(huge_root / "huge.txt")])
    assert outcome.code == "CANCELLED"
    after = [t.event["type"] for t in timed if t.at > cancel_sent]
    assert "message_start" not in after, f"events after the cancel: {after}"
    assert scrape(server.port).value("sluice_simulator_requests") == 1


# MARK: 4. Parallel tool calls


def test_tool_calls_of_one_turn_run_in_parallel(start_server, root):
    """Two reads of 8 MB (a few seconds each on the debug build the suite runs against): their
    progress interleaves in seq order before either completes."""
    for name in ("a.txt", "b.txt"):
        write_text_file(root / name, 8 * 1000 * 1000)
    server = start_server("--tool-root", str(root))
    with SluiceClient(server.port) as client:
        reader = client.start(tool_request(read_file("a.txt"), read_file("b.txt")), timeout=30)
        read_until(reader, lambda e: e["type"] in ("tool_complete", "tool_error"))
        events = list(reader.events)
        reader.call.cancel()  # the rest (the next turn) is not this test's business
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    starts = of_type(events, "tool_start")
    assert [s["input"] for s in starts] == [{"path": "a.txt"}, {"path": "b.txt"}]
    assert events[-1]["type"] == "tool_complete", events[-1]
    progress_ids = [e["id"] for e in of_type(events, "tool_progress")]
    assert {s["id"] for s in starts} == set(progress_ids), "a tool completed before the other made progress"
    switches = sum(1 for a, b in zip(progress_ids, progress_ids[1:]) if a != b)
    assert switches >= 2, f"progress does not interleave (tool ids in seq order: {progress_ids})"


# MARK: 5. --max-turns


def test_max_turns_ends_the_stream(start_server, root):
    (root / "small.txt").write_text("hello\n")
    server = start_server("--tool-root", str(root), "--max-turns", "1")
    with SluiceClient(server.port) as client:
        outcome = client.send_message(tool_request(read_file("small.txt")))
    assert outcome.code == "RESOURCE_EXHAUSTED"
    assert "turn limit (1 per stream)" in outcome.events[-1]["error"]
    assert "turn limit (1 per stream)" in outcome.details


# MARK: 6. Tools the request did not enable


@pytest.mark.parametrize("tools", [["read_file", "delete_files"], ["get_weather"]])
def test_unknown_tool_in_request_is_invalid_argument(start_server, root, tools):
    server = start_server("--tool-root", str(root))
    status, message = rejected_at_once(server.port, tool_request(read_file("x.txt"), tools=tools))
    assert status == GRPC_INVALID_ARGUMENT
    unknown = tools[-1]
    assert f"unknown tool '{unknown}'" in message, message
    assert "read_file, list_directory, search_files" in message or "list_directory, read_file, search_files" in message


@pytest.mark.parametrize("called", ["list_directory", "get_weather"])
def test_model_calling_a_tool_not_enabled_gets_a_tool_error(start_server, root, called):
    (root / "small.txt").write_text("hello\n")
    server = start_server("--tool-root", str(root))
    call = {"name": called, "input": {"path": "."}}
    with SluiceClient(server.port) as client:
        outcome = client.send_message(tool_request(call, read_file("small.txt")))
    assert outcome.code == "OK", outcome.details
    starts = {s["name"]: s["id"] for s in outcome.of_type("tool_start")}
    assert set(starts) == {called, "read_file"}
    (error,) = outcome.of_type("tool_error")
    assert error["id"] == starts[called]
    assert f"unknown tool '{called}'" in error["error"] and "offers read_file" in error["error"], error["error"]
    (complete,) = outcome.of_type("tool_complete")
    assert complete["id"] == starts["read_file"]


# MARK: 7. No tool root


def test_tools_without_tool_root_are_invalid_argument(server):
    status, message = rejected_at_once(server.port, tool_request(read_file("x.txt")))
    assert status == GRPC_INVALID_ARGUMENT
    assert "no tool roots configured" in message, message
    # And with grpcio: no events at all.
    with SluiceClient(server.port) as client:
        outcome = client.send_message(tool_request(read_file("x.txt")))
    assert outcome.code == "INVALID_ARGUMENT" and outcome.events == []
    assert "no tool roots configured" in outcome.details
