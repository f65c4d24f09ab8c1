#!/usr/bin/env python3
"""Helpers for Benchmarks/transport/run.sh (standard library only).

Subcommands:
  body      --frames N --size S --interval-ms I --out FILE
            Write the gRPC-enveloped JSON request body that h2load/nghttp POST.
  rps       H2LOAD_STDOUT
            Print h2load's req/s (used to size the measured runs from the warm-up pass).
  probe     --server NAME --verbose-log FILE --body FILE --frames N --size S
            Check one nghttp exchange: HTTP 200, content-type application/grpc, trailers with
            grpc-status 0, and that the body is exactly the expected N enveloped JSON frames.
  summarize --work DIR --out-md FILE --out-json FILE
            Read the manifest written by run.sh plus every h2load stdout/--log-file, verify each
            measurement, compute frames/s, mean, p50, p99 request time, and write RESULTS.md/.json.
            When run.json names a baseline Sluice (BASELINE_BIN), also the ratios current / baseline
            per scenario: of the medians, and round by round (the spread shows the noise).
"""

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from datetime import datetime, timezone

FRAME_TYPE = "message_delta"
TARGET_THROUGHPUT_RATIO = 5.0  # Sluice frames/s >= 5x grpc-swift-2
TARGET_RTT_RATIO = 1.0 / 3.0  # Sluice mean round trip <= 1/3 of grpc-swift-2's


# --------------------------------------------------------------------------------------------
# Expected wire content


def delta_text(size):
    return "".join(chr(ord("a") + i % 26) for i in range(size))


def frame_json(seq, size):
    # Both servers emit compact JSON with these three keys; key order may differ but the length
    # cannot, so byte counts are comparable.
    return '{"seq":%d,"type":"%s","delta":"%s"}' % (seq, FRAME_TYPE, delta_text(size))


def expected_body_bytes(frames, size):
    return sum(5 + len(frame_json(seq, size).encode()) for seq in range(1, frames + 1))


def envelope(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


# --------------------------------------------------------------------------------------------
# h2load output parsing


def parse_h2load(text):
    out = {}
    m = re.search(r"finished in ([\d.]+)(ms|s|us), ([\d.]+) req/s, ([\d.]+)([KMG]?B)/s", text)
    if m:
        scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6}[m.group(2)]
        out["finished_s"] = float(m.group(1)) * scale
        out["req_per_s"] = float(m.group(3))
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
    )
    if m:
        keys = ["total", "started", "done", "succeeded", "failed", "errored", "timeout"]
        out["requests"] = dict(zip(keys, map(int, m.groups())))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        out["status"] = dict(zip(["2xx", "3xx", "4xx", "5xx"], map(int, m.groups())))
    m = re.search(r"traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers.*?, .*?\((\d+)\) data", text)
    if m:
        out["traffic"] = dict(zip(["total", "headers", "data"], map(int, m.groups())))
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if m:
        out["h2load_request_time"] = dict(zip(["min", "max", "mean", "sd"], m.groups()))
    return out


def parse_log(path):
    """h2load --log-file: start (us since epoch) \\t status (-1 = failed) \\t duration (us)."""
    statuses, durations, starts = {}, [], []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 3:
                continue
            start, status, dur = int(parts[0]), int(parts[1]), int(parts[2])
            statuses[status] = statuses.get(status, 0) + 1
            starts.append(start)
            durations.append(dur)
    return statuses, durations, starts


def percentile(sorted_values, p):
    """Nearest-rank percentile."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def cmd_rps(args):
    with open(args.stdout) as f:
        info = parse_h2load(f.read())
    if "req_per_s" not in info:
        sys.exit("could not parse req/s from %s" % args.stdout)
    print(info["req_per_s"])


def cmd_body(args):
    request = json.dumps(
        {"frames": args.frames, "size": args.size, "interval_ms": args.interval_ms},
        separators=(",", ":"),
    ).encode()
    with open(args.out, "wb") as f:
        f.write(envelope(request))


# --------------------------------------------------------------------------------------------
# nghttp probe: the one place we can see trailers (h2load cannot)


def cmd_probe(args):
    problems = []
    with open(args.verbose_log, errors="replace") as f:
        verbose = f.read()
    headers = re.findall(r"recv \(stream_id=\d+\) ([^:\s][^:]*|:status): (.*)", verbose)
    hmap = {}
    for k, v in headers:
        hmap.setdefault(k.strip(), []).append(v.strip())
    if hmap.get(":status") != ["200"]:
        problems.append(":status %s" % hmap.get(":status"))
    if not any(v.startswith("application/grpc") for v in hmap.get("content-type", [])):
        problems.append("content-type %s" % hmap.get("content-type"))
    if hmap.get("grpc-status") != ["0"]:
        problems.append("grpc-status %s (message %s)" % (hmap.get("grpc-status"), hmap.get("grpc-message")))
    with open(args.body, "rb") as f:
        body = f.read()
    expected = b"".join(envelope(frame_json(i, args.size).encode()) for i in range(1, args.frames + 1))
    if len(body) != len(expected):
        problems.append("body is %d bytes, expected %d" % (len(body), len(expected)))
    # Decode envelopes and JSON, compare field by field (key order is irrelevant).
    offset, seq = 0, 0
    while offset + 5 <= len(body):
        flag, length = body[offset], int.from_bytes(body[offset + 1 : offset + 5], "big")
        payload = body[offset + 5 : offset + 5 + length]
        offset += 5 + length
        seq += 1
        try:
            msg = json.loads(payload)
        except ValueError:
            problems.append("frame %d is not JSON" % seq)
            break
        want = {"seq": seq, "type": FRAME_TYPE, "delta": delta_text(args.size)}
        if flag != 0 or msg != want:
            problems.append("frame %d is %r (flag %d)" % (seq, msg, flag))
            break
    if seq != args.frames:
        problems.append("decoded %d frames, expected %d" % (seq, args.frames))
    if problems:
        print("PROBE FAILED for %s: %s" % (args.server, "; ".join(problems)), file=sys.stderr)
        sys.exit(1)
    print(
        "probe ok: %s -> 200, application/grpc, %d frames, %d body bytes, grpc-status 0"
        % (args.server, seq, len(body))
    )


# --------------------------------------------------------------------------------------------
# Summary


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60).stdout.strip()
    except Exception as exc:  # noqa: BLE001 - description only
        return "unavailable (%s)" % exc


def machine_description():
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                kb = int(line.split()[1])
                mem = "%.1f GiB (%d kB)" % (kb / 1048576, kb)
                break
    os_name = "unknown"
    if os.path.exists("/etc/os-release"):
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip().strip('"')
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": int(sh("nproc") or 0),
        "cpu_model": cpu_model,
        "memory": mem,
        "kernel": platform.release(),
        "os": os_name,
        "virtualization": sh("systemd-detect-virt 2>/dev/null || true") or "unknown",
        "swift": sh("swift --version 2>&1 | head -1"),
        "h2load": sh("h2load --version 2>&1 | head -1"),
        "libnghttp2": sh("pkg-config --modversion libnghttp2 2>/dev/null"),
        "python": platform.python_version(),
    }


def read_manifest(work):
    rows = []
    with open(os.path.join(work, "manifest.tsv")) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            if line.strip():
                rows.append(dict(zip(header, line.rstrip("\n").split("\t"))))
    return rows


def analyse(row, work, clk_tck):
    frames, size, n = int(row["frames"]), int(row["size"]), int(row["n"])
    with open(os.path.join(work, row["stdout"])) as f:
        h2 = parse_h2load(f.read())
    with open(os.path.join(work, row["cmd"])) as f:
        command = f.read().strip()
    statuses, durations, starts = parse_log(os.path.join(work, row["log"]))
    durations.sort()
    problems = []
    req = h2.get("requests", {})
    if int(row["exit"]) != 0:
        problems.append("h2load exited %s" % row["exit"])
    if not req:
        problems.append("could not parse h2load output")
    else:
        if not (req["total"] == req["done"] == req["succeeded"] == n):
            problems.append("requests %s, expected %d all succeeded" % (req, n))
        if req["failed"] or req["errored"] or req["timeout"]:
            problems.append("failures %s" % req)
    if h2.get("status", {}).get("2xx") != n:
        problems.append("status codes %s" % h2.get("status"))
    if statuses != {200: n}:
        problems.append("log statuses %s (expected {200: %d})" % (statuses, n))
    expected_data = n * expected_body_bytes(frames, size)
    data = h2.get("traffic", {}).get("data")
    if data != expected_data:
        problems.append("data bytes %s != expected %d (%d frames x %d B per request)" % (data, expected_data, frames, size))

    succeeded = req.get("succeeded", 0)
    # h2load prints req/s = succeeded / elapsed with more precision than "finished in".
    rps = h2.get("req_per_s") or 0.0
    elapsed = succeeded / rps if rps else h2.get("finished_s", float("nan"))
    cpu_s = (int(row["cpu_after"]) - int(row["cpu_before"])) / clk_tck
    total_frames = succeeded * frames
    mean_us = statistics.fmean(durations) if durations else float("nan")
    return {
        "scenario": row["scenario"],
        "server": row["server"],
        "round": int(row["round"]),
        "command": command,
        "n": n,
        "clients": int(row["c"]),
        "streams_per_client": int(row["m"]),
        "frames_per_request": frames,
        "frame_size": size,
        "succeeded": succeeded,
        "elapsed_s": elapsed,
        "requests_per_s": rps,
        "frames_per_s": total_frames / elapsed if elapsed else float("nan"),
        "mean_ms": mean_us / 1000.0,
        "p50_ms": percentile(durations, 50) / 1000.0,
        "p99_ms": percentile(durations, 99) / 1000.0,
        "max_ms": (durations[-1] / 1000.0) if durations else float("nan"),
        "h2load_mean": h2.get("h2load_request_time", {}).get("mean"),
        "data_bytes": data,
        "expected_data_bytes": expected_data,
        "server_cpu_s": cpu_s,
        "server_cpu_us_per_frame": (cpu_s * 1e6 / total_frames) if total_frames else float("nan"),
        "h2load_cpu_s": float(row["h2load_user"]) + float(row["h2load_sys"]),
        # Share of one core the (single-threaded) client used: near 100% means the client, not
        # the server, limited the rate.
        "h2load_busy_pct": 100.0 * (float(row["h2load_user"]) + float(row["h2load_sys"])) / float(row["h2load_real"]),
        "server_cores_used": cpu_s / float(row["h2load_real"]),
        "valid": not problems,
        "problems": problems,
    }


SCENARIOS = {
    "A": "100 frames x 64 B, -c 10 -m 10",
    "B": "100 frames x 64 B, -c 100 -m 10",
    "C": "single-stream round trip, 1 frame x 64 B, -c 1 -m 1",
}


def median_of(rows, key):
    return statistics.median(r[key] for r in rows)


def cmd_summarize(args):
    work = args.work
    with open(os.path.join(work, "run.json")) as f:
        run = json.load(f)
    clk_tck = os.sysconf("SC_CLK_TCK")
    rows = [r for r in read_manifest(work) if r["phase"] == "measure"]
    measurements = [analyse(r, work, clk_tck) for r in rows]
    servers = [s["name"] for s in run["servers"]]

    summary = {}
    for scenario in sorted({m["scenario"] for m in measurements}):
        summary[scenario] = {}
        for server in servers:
            ms = [m for m in measurements if m["scenario"] == scenario and m["server"] == server]
            if not ms:
                continue
            summary[scenario][server] = {
                "rounds": len(ms),
                "requests_per_round": ms[0]["n"],
                "requests_total": sum(m["succeeded"] for m in ms),
                "frames_per_s": median_of(ms, "frames_per_s"),
                "mean_ms": median_of(ms, "mean_ms"),
                "p50_ms": median_of(ms, "p50_ms"),
                "p99_ms": median_of(ms, "p99_ms"),
                "server_cpu_us_per_frame": median_of(ms, "server_cpu_us_per_frame"),
                "server_cores_used": median_of(ms, "server_cores_used"),
                "h2load_busy_pct": median_of(ms, "h2load_busy_pct"),
                "all_valid": all(m["valid"] for m in ms),
            }

    targets = []
    s, g = "sluice", "grpc-swift-2"
    for scenario in ("A", "B"):
        if scenario in summary and s in summary[scenario] and g in summary[scenario]:
            ratio = summary[scenario][s]["frames_per_s"] / summary[scenario][g]["frames_per_s"]
            targets.append({
                "scenario": scenario,
                "metric": "frames/s ratio sluice / grpc-swift-2",
                "target": ">= %.1f" % TARGET_THROUGHPUT_RATIO,
                "value": ratio,
                "pass": ratio >= TARGET_THROUGHPUT_RATIO,
            })
    if "C" in summary and s in summary["C"] and g in summary["C"]:
        ratio = summary["C"][s]["mean_ms"] / summary["C"][g]["mean_ms"]
        targets.append({
            "scenario": "C",
            "metric": "mean round-trip ratio sluice / grpc-swift-2",
            "target": "<= 0.333 (1/3)",
            "value": ratio,
            "pass": ratio <= TARGET_RTT_RATIO + 1e-12,
        })

    # Not a target, but robust when the machine is shared: server CPU spent per frame.
    efficiency = []
    for scenario in ("A", "B", "C"):
        if scenario in summary and s in summary[scenario] and g in summary[scenario]:
            a, b = summary[scenario][s]["server_cpu_us_per_frame"], summary[scenario][g]["server_cpu_us_per_frame"]
            efficiency.append({
                "scenario": scenario,
                "metric": "server CPU per frame, grpc-swift-2 / sluice",
                "value": (b / a) if a else float("nan"),
            })

    baseline = baseline_comparison(run, summary, measurements)
    all_valid = all(m["valid"] for m in measurements)
    result = {
        "machine": machine_description(),
        "run": run,
        "scenarios": SCENARIOS,
        "summary": summary,
        "targets": targets,
        "cpu_efficiency": efficiency,
        **({"baseline_comparison": baseline} if baseline is not None else {}),
        "all_measurements_valid": all_valid,
        "measurements": measurements,
    }
    with open(args.out_json, "w") as f:
        json.dump(result, f, indent=2, sort_keys=False)
        f.write("\n")
    with open(args.out_md, "w") as f:
        f.write(render_markdown(result))
    print(render_console(result))
    if not all_valid:
        print("SOME MEASUREMENTS FAILED VERIFICATION (see RESULTS.md)", file=sys.stderr)
        sys.exit(3)


# current / baseline: > 1 means the current build is higher (better for frames/s, worse for the others).
BASELINE_METRICS = [
    ("frames_per_s", "frames/s"),
    ("mean_ms", "mean request time"),
    ("p99_ms", "p99 request time"),
    ("server_cpu_us_per_frame", "server CPU / frame"),
]


def baseline_comparison(run, summary, measurements):
    """Per scenario and metric: the ratio of the medians over rounds, and the ratio in each round."""
    if "baseline" not in run:
        return None
    label, current = run["baseline"]["name"], "sluice"
    comparison = {"baseline": run["baseline"], "current": current, "scenarios": {}}
    for scenario, per_server in summary.items():
        if current not in per_server or label not in per_server:
            continue
        by_round = {}
        for m in measurements:
            if m["scenario"] == scenario and m["server"] in (current, label):
                by_round.setdefault(m["round"], {})[m["server"]] = m
        metrics = {}
        for key, _ in BASELINE_METRICS:
            base = per_server[label][key]
            rounds = [pair[current][key] / pair[label][key]
                      for _, pair in sorted(by_round.items()) if len(pair) == 2 and pair[label][key]]
            metrics[key] = {
                "current": per_server[current][key],
                "baseline": base,
                "ratio": per_server[current][key] / base if base else float("nan"),
                "ratio_per_round": rounds,
            }
        comparison["scenarios"][scenario] = metrics
    return comparison


def fmt(x, digits=2):
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    return "{:,.{d}f}".format(x, d=digits)


def render_console(result):
    lines = []
    for scenario, per_server in result["summary"].items():
        lines.append("%s) %s" % (scenario, result["scenarios"].get(scenario, "")))
        for server, v in per_server.items():
            lines.append(
                "   %-13s frames/s %12s  mean %9s ms  p99 %9s ms  cpu %6s us/frame%s"
                % (server, fmt(v["frames_per_s"], 0), fmt(v["mean_ms"], 3), fmt(v["p99_ms"], 3),
                   fmt(v["server_cpu_us_per_frame"], 2), "" if v["all_valid"] else "  INVALID")
                + "  h2load %s%%" % fmt(v["h2load_busy_pct"], 0)
            )
    for t in result["targets"]:
        lines.append("target %s: %s = %.3f (%s) -> %s" % (t["scenario"], t["metric"], t["value"], t["target"], "PASS" if t["pass"] else "FAIL"))
    comparison = result.get("baseline_comparison")
    if comparison:
        for scenario, metrics in comparison["scenarios"].items():
            lines.append("%s) sluice / %s: %s" % (scenario, comparison["baseline"]["name"], ", ".join(
                "%s %s (rounds %s)" % (label, fmt(metrics[key]["ratio"], 3),
                                       " ".join(fmt(r, 3) for r in metrics[key]["ratio_per_round"]))
                for key, label in BASELINE_METRICS)))
    return "\n".join(lines)


def render_markdown(result):
    m, run = result["machine"], result["run"]
    out = []
    w = out.append
    comparison = result.get("baseline_comparison")
    if comparison:
        w("# Transport benchmark: Sluice vs grpc-swift-2, and Sluice vs its baseline `%s`\n" % comparison["baseline"]["name"])
        w("Generated by `Benchmarks/transport/run.sh` with `BASELINE_BIN` (numbers below are from one run of that "
          "script; all three servers were measured in the same run, alternating, on the same machine).\n")
    else:
        w("# Transport benchmark: Sluice vs grpc-swift-2\n")
        w("Generated by `Benchmarks/transport/run.sh` (numbers below are from one run of that script; "
          "both servers were measured in the same run, alternating, on the same machine).\n")
    if run.get("measured_at_utc"):
        m["date_utc"] = run["measured_at_utc"] + " (end of measurements)"
    w("## Machine\n")
    w("| | |\n|---|---|")
    for key, label in [("date_utc", "Date (UTC)"), ("nproc", "nproc"), ("cpu_model", "CPU"),
                       ("memory", "Memory"), ("kernel", "Kernel"), ("os", "OS"),
                       ("virtualization", "Virtualization"), ("swift", "Swift"),
                       ("h2load", "h2load"), ("libnghttp2", "libnghttp2 (Sluice links it)"),
                       ("python", "Python (summarizer)")]:
        w("| %s | %s |" % (label, str(m[key]).replace("|", "\\|")))
    w("| Load average before / after measuring | %s / %s |" % (run.get("loadavg_before_measuring", "?"), run.get("loadavg_after_measuring", "?")))
    w("| Busiest processes before measuring | %s |" % run.get("top_processes_before_measuring", "?").replace("|", "\\|"))
    dirty = run.get("git_dirty_files") or []
    w("| Sluice commit | `%s`%s |" % (run["git_commit"], (" + uncommitted changes in " + ", ".join("`%s`" % d for d in dirty)) if dirty else ""))
    w("")
    w("## Servers\n")
    w("%s use their defaults for threads (this machine has %s cores):\n" % ("All" if comparison else "Both", m["nproc"]))
    for s in run["servers"]:
        w("- **%s**: `%s`  \n  %s  \n  ready line: `%s`; OS threads after the run: %s"
          % (s["name"], s["command"], s["description"], s["ready_line"], s.get("threads_at_end", "?")))
    pins = run.get("peer_resolved_packages") or {}
    if pins:
        w("\nPeer dependency versions (GRPCSwiftPeer/Package.resolved): "
          + ", ".join("%s %s" % (k, pins[k]) for k in sorted(pins)) + ".")
    w("")
    w("## Method\n")
    w("- Request: `POST /sluice.v1.Synthetic/Stream`, `content-type: application/grpc`, `te: trailers`, "
      "body = gRPC envelope of `%s`; response = N enveloped frames "
      "`{\"seq\":i,\"type\":\"message_delta\",\"delta\":\"<S bytes>\"}` then trailers." % run["request_json"]["A"])
    w("- Before measuring, `nghttp` fetched each scenario's request from each server and checked HTTP 200, "
      "`application/grpc`, **trailer grpc-status 0**, and every frame decoded to the expected JSON "
      "(h2load cannot see trailers).")
    w("- Warm-up: one `h2load -D %s` pass per scenario per server (alternating); its req/s sizes `-n` so "
      "each measured run lasts about %s s." % (run["warmup_seconds"], run["measure_seconds"]))
    w("- Measurement: %d round(s); in each round, for each scenario, %s servers run back to back "
      "(order %s between rounds). Reported values are the median over rounds."
      % (run["rounds"], "all" if comparison else "both", "rotates" if comparison else "alternates"))
    w("- Every measured run is verified: all `-n` requests done and succeeded, 0 failed/errored/timeout, "
      "every `--log-file` status 200, and h2load's received DATA bytes exactly equal to "
      "requests × (expected enveloped frame bytes).")
    w("- frames/s = succeeded requests × frames per request / elapsed (elapsed = succeeded ÷ h2load req/s). "
      "mean/p50/p99 request time are computed from h2load's `--log-file` (per-request microseconds, "
      "nearest-rank percentiles) by `summarize.py`. Server CPU = utime+stime of the server process over "
      "the run (from /proc), divided by frames delivered.")
    w("- h2load is single-threaded (`-t 1`) and shares the %s cores with the server, so at high rates "
      "the client can be the bottleneck: \"h2load core busy\" near 100%% flags that. \"server CPU / frame\" "
      "(utime+stime ÷ frames) does not depend on who limited the rate; \"server cores busy\" is server CPU "
      "time ÷ wall time." % m["nproc"])
    w("")
    w("Exact commands (ports are chosen per run):\n")
    w("```sh")
    for line in run["commands"]:
        w(line)
    w("```\n")

    try:
        load = float(str(run.get("loadavg_before_measuring", "0")).split()[0])
    except ValueError:
        load = 0.0
    if m["nproc"] and load > m["nproc"]:
        w("> **Caveat:** the 1-minute load average was %.1f on %d cores when measuring started: other processes "
          "competed for the CPU throughout, so absolute rates and tail latencies are pessimistic and vary from "
          "run to run (scenario C, a single stream, is the most sensitive). Same-run alternation keeps the "
          "comparison fair; \"server CPU / frame\" is the least affected number.\n" % (load, m["nproc"]))
    w("## Results\n")
    for scenario, per_server in result["summary"].items():
        w("### %s) %s\n" % (scenario, result["scenarios"].get(scenario, "")))
        w("| server | requests (per run × rounds) | frames/s | mean | p50 | p99 | server CPU / frame | server cores busy | h2load core busy | verified |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for server, v in per_server.items():
            w("| %s | %s × %d | %s | %s ms | %s ms | %s ms | %s µs | %s | %s%% | %s |" % (
                server, fmt(v["requests_per_round"], 0), v["rounds"], fmt(v["frames_per_s"], 0),
                fmt(v["mean_ms"], 3), fmt(v["p50_ms"], 3), fmt(v["p99_ms"], 3),
                fmt(v["server_cpu_us_per_frame"], 2), fmt(v["server_cores_used"], 2), fmt(v["h2load_busy_pct"], 0),
                "yes" if v["all_valid"] else "**NO**"))
        w("")
    w("## Targets\n")
    w("| scenario | metric | target | measured | result |")
    w("|---|---|---|---:|---|")
    for t in result["targets"]:
        w("| %s | %s | %s | %.3f | **%s** |" % (t["scenario"], t["metric"], t["target"], t["value"], "PASS" if t["pass"] else "FAIL"))
    w("")
    w("Informational (not a target): how many times more server CPU grpc-swift-2 spends per frame than Sluice "
      "(independent of how the CPU was shared with h2load and other processes):\n")
    w("| scenario | grpc-swift-2 CPU/frame ÷ Sluice CPU/frame |")
    w("|---|---:|")
    for e in result.get("cpu_efficiency", []):
        w("| %s | %.2f× |" % (e["scenario"], e["value"]))
    w("")
    if comparison:
        w("## Current vs baseline\n")
        w("`sluice` (commit `%s`) ÷ `%s` (commit `%s`), measured in this run: the ratio of the medians, then "
          "the ratio within each round (the two runs of a round are close in time, so the spread of these is "
          "the noise). frames/s: below 1 = current slower; request times and server CPU / frame: above 1 = "
          "current slower or costlier.\n"
          % (run["git_commit"], comparison["baseline"]["name"], comparison["baseline"]["git_commit"]))
        w("| scenario | metric | sluice | %s | ratio | ratio per round |" % comparison["baseline"]["name"])
        w("|---|---|---:|---:|---:|---|")
        units = {"frames_per_s": ("", 0), "mean_ms": (" ms", 3), "p99_ms": (" ms", 3), "server_cpu_us_per_frame": (" µs", 2)}
        for scenario, metrics in comparison["scenarios"].items():
            for key, label in BASELINE_METRICS:
                v = metrics[key]
                unit, digits = units[key]
                w("| %s | %s | %s%s | %s%s | %s | %s |" % (
                    scenario, label, fmt(v["current"], digits), unit, fmt(v["baseline"], digits), unit,
                    fmt(v["ratio"], 3), ", ".join(fmt(r, 3) for r in v["ratio_per_round"])))
        w("")
    w("## All runs\n")
    w("| scenario | round | server | -n | elapsed | frames/s | mean | p99 | max | server CPU | h2load CPU | verified |")
    w("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for x in result["measurements"]:
        w("| %s | %d | %s | %s | %s s | %s | %s ms | %s ms | %s ms | %s s | %s s | %s |" % (
            x["scenario"], x["round"], x["server"], fmt(x["n"], 0), fmt(x["elapsed_s"], 2),
            fmt(x["frames_per_s"], 0), fmt(x["mean_ms"], 3), fmt(x["p99_ms"], 3), fmt(x["max_ms"], 3),
            fmt(x["server_cpu_s"], 2), fmt(x["h2load_cpu_s"], 2),
            "yes" if x["valid"] else "**NO**: " + "; ".join(x["problems"])))
    w("")
    w("Raw numbers: `RESULTS.json`.")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("body")
    b.add_argument("--frames", type=int, required=True)
    b.add_argument("--size", type=int, required=True)
    b.add_argument("--interval-ms", type=int, default=0)
    b.add_argument("--out", required=True)
    r = sub.add_parser("rps")
    r.add_argument("stdout")
    pr = sub.add_parser("probe")
    pr.add_argument("--server", required=True)
    pr.add_argument("--verbose-log", required=True)
    pr.add_argument("--body", required=True)
    pr.add_argument("--frames", type=int, required=True)
    pr.add_argument("--size", type=int, required=True)
    s = sub.add_parser("summarize")
    s.add_argument("--work", required=True)
    s.add_argument("--out-md", required=True)
    s.add_argument("--out-json", required=True)
    args = p.parse_args()
    {"body": cmd_body, "rps": cmd_rps, "probe": cmd_probe, "summarize": cmd_summarize}[args.cmd](args)


if __name__ == "__main__":
    main()
