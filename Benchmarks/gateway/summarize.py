"""Turns run.sh's work files into RESULTS.md and RESULTS.json (the table, the ratios, the targets)."""

import argparse
import datetime
import json
import os
import platform
import subprocess

CLIENTS = {
    "sluice": "client.py, SSE routes over HTTP/1.1",
    "sluice-rpc": "`sluice loadtest`, SendMessage over h2c",
    "nghttpx": "client.py, POST /v1/messages over HTTP/1.1",
    "litellm": "client.py, POST /v1/messages over HTTP/1.1",
    "direct": "client.py, POST /v1/messages over HTTP/1.1 + TLS",
}


def delivery_buckets(path):
    """sluice_event_delivery_latency_seconds from a /metrics scrape: [(upper bound s, cumulative count)]."""
    buckets = []
    for line in open(path):
        if line.startswith("sluice_event_delivery_latency_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(line.split()[-1])))
    return sorted(buckets)


def histogram_quantile(buckets, q):
    """The bucket bound (ms) under which a share q of the events were delivered."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return float("nan")
    return next(bound for bound, count in buckets if count >= q * total) * 1000


def load(path):
    return json.load(open(path))


def main():
    parser = argparse.ArgumentParser()
    for flag in ("work", "dest", "levels", "gateways", "litellm-version", "nghttpx-version", "sluice-bin", "load-before"):
        parser.add_argument("--" + flag, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--litellm-scale", type=int, required=True)
    parser.add_argument("--smoke", default="0")
    parser.add_argument("--sluice-commit", default="", help="the commit BIN was built at, when BIN is a copy outside its checkout")
    args = parser.parse_args()
    work, gateways = args.work, args.gateways.split()
    rows, raw, missing = [], {}, []
    for level in args.levels.split():
        streams, interval = map(int, level.split(":"))
        for name in gateways:
            tag = f"level-{streams}-{interval}-{name}"
            if not os.path.exists(f"{work}/floor-{tag}"):  # the run was stopped before this row finished
                missing.append(f"{name} at {streams} streams, a delta per {interval} ms")
                continue
            client = load(f"{work}/client-{tag}.json")
            in_flight = -(-streams // args.litellm_scale) if name == "litellm" else streams
            idle, peak = map(int, open(f"{work}/rss-{tag}").read().split())
            cpu = float(open(f"{work}/cpu-{tag}").read())
            steal = float(open(f"{work}/steal-{tag}").read())
            floor = load(f"{work}/floor-{tag}")
            e2e = client["latency_ms"]["end_to_end"]
            deltas = e2e.get("count", 0)
            share = None
            if os.path.exists(f"{work}/metrics-{tag}"):
                buckets = delivery_buckets(f"{work}/metrics-{tag}")
                share = {"p50_ms_at_most": histogram_quantile(buckets, 0.5), "p99_ms_at_most": histogram_quantile(buckets, 0.99),
                         "buckets_seconds": buckets}
            row = {"gateway": name, "client": CLIENTS[name], "streams_in_flight": in_flight, "interval_ms": interval,
                   "level": level, "ok": client["streams"]["ok"], "failed": client["streams"]["failed"], "deltas": deltas,
                   "deltas_per_second": deltas / client["wall_seconds"] if client["wall_seconds"] else 0,
                   "cpu_seconds": cpu, "cpu_us_per_delta": cpu * 1e6 / deltas if deltas else float("nan"),
                   "rss_kib_idle": idle, "rss_kib_peak": peak, "rss_kib_per_stream": (peak - idle) / in_flight,
                   "e2e_ms": e2e, "floor_ms": floor, "steal_percent": steal, "sluice_share_ms": share,
                   "errors": client.get("errors") or client.get("statuses")}
            rows.append(row)
    raw["levels"] = rows

    ttft = {}
    for name in ["direct-first", "direct"] + [g for g in gateways if g != "sluice-rpc"]:
        path = f"{work}/client-ttft-{name}.json"
        if os.path.exists(path):
            ttft[name] = load(path)["latency_ms"]["time_to_first_token"]
    if "direct-first" in ttft and "direct" in ttft:
        direct = {q: (ttft["direct-first"][q] + ttft["direct"][q]) / 2 for q in ("p50", "p99")}
    else:
        direct = ttft.get("direct") or ttft.get("direct-first")
    raw["ttft_ms"] = ttft

    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    swift = subprocess.run(["swift", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    commit = args.sluice_commit or subprocess.run(["git", "-C", os.path.dirname(args.sluice_bin), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    load_after = " ".join(open("/proc/loadavg").read().split()[:3])
    machine = (f"{os.cpu_count()} cores ({cpu_model}), {int(mem) // 1024} MiB RAM, {platform.platform()}, {swift}; "
               f"nghttpx: {args.nghttpx_version}; LiteLLM {args.litellm_version}; Python {platform.python_version()}")
    raw["machine"] = machine
    raw["load_average"] = {"before": args.load_before, "after": load_after}
    raw["sluice"] = {"binary": args.sluice_bin, "git_commit": commit}

    def find(name, level):
        return next((r for r in rows if r["gateway"] == name and r["level"] == level), None)

    lines = [
        "# Gateway benchmark: Sluice, nghttpx (pass-through) and LiteLLM in front of the same simulator",
        "",
        f"Generated by `Benchmarks/gateway/run.sh` on {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} "
        f"(load average before: {args.load_before}; after: {load_after}).",
        f"Machine: {machine}.",
        f"Sluice: `{args.sluice_bin}` (built at commit `{commit}`).",
        "",
        "The upstream is one `sluice simulate` (TLS, one event loop) for every row; gateway, simulator and client share",
        "the machine's 2 cores, with other work running on them (the load average above), so CPU is measured as CPU time",
        "of the gateway's own processes (user + system, /proc/PID/stat), not wall time, and compared within this run.",
        f"Each answer: {args.tokens} output tokens as about {args.tokens * 57 // 100} text deltas, one per interval, each stamped",
        "by the simulator with its send time. Each workload keeps `streams` answers in flight (2 × streams started at the",
        "rate that holds it) through a freshly started gateway, after a 10-answer warm-up; gateways alternate, the order",
        "rotating between workloads. RSS per stream = (peak − idle after warm-up) ÷ streams in flight, summed over the",
        "gateway's processes. End-to-end = simulator stamp → client read; floor = the same message rate through three",
        "do-nothing processes (`Benchmarks/streaming/floor.c`) right after. Sluice's share = its",
        "`sluice_event_delivery_latency_seconds` histogram (job emits an event → frame handed to the connection), as a bucket bound.",
        f"LiteLLM runs each workload with streams ÷ {args.litellm_scale} in flight: at the full rate it would need several cores.",
        "",
        "Clients: " + "; ".join(f"`{name}`: {CLIENTS[name]}" for name in gateways) + ".",
        "",
        "| gateway | streams in flight | interval | ok / failed | deltas/s | CPU µs / delta | × nghttpx | RSS idle → peak | KiB / stream | e2e p50 ms | e2e p99 ms | floor p99 ms | Sluice's share p50 / p99 | steal |",
        "|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        base = find("nghttpx", row["level"])
        ratio = row["cpu_us_per_delta"] / base["cpu_us_per_delta"] if base and base["cpu_us_per_delta"] else float("nan")
        share = row["sluice_share_ms"]
        e2e = row["e2e_ms"]
        lines.append(
            f"| {row['gateway']} | {row['streams_in_flight']} | {row['interval_ms']} ms | {row['ok']} / {row['failed']} | "
            f"{row['deltas_per_second']:.0f} | {row['cpu_us_per_delta']:.1f} | {ratio:.2f} | "
            f"{row['rss_kib_idle'] / 1024:.1f} → {row['rss_kib_peak'] / 1024:.1f} MiB | {row['rss_kib_per_stream']:.1f} | "
            f"{e2e.get('p50', float('nan')):.2f} | {e2e.get('p99', float('nan')):.2f} | {row['floor_ms']['p99']:.2f} | "
            + (f"≤ {share['p50_ms_at_most']:g} / ≤ {share['p99_ms_at_most']:g} ms" if share else "—")
            + f" | {row['steal_percent']:.1f} % |")
    lines += ["", "Time to first token at low load (client.py; request written on an open connection → first stamped text delta):",
              "", "| path | p50 ms | p99 ms | overhead p50 | overhead p99 |", "|---|---:|---:|---:|---:|"]
    if not ttft:
        lines.append("| (not measured: the run was stopped before this workload) | | | | |")
    for name, figures in ttft.items():
        label = {"direct-first": "simulator directly (first)", "direct": "simulator directly (last)"}.get(name, name)
        overhead = "" if name.startswith("direct") or not direct else (
            f"{figures['p50'] - direct['p50']:+.2f} ms | {figures['p99'] - direct['p99']:+.2f} ms")
        lines.append(f"| {label} | {figures.get('p50', float('nan')):.2f} | {figures.get('p99', float('nan')):.2f} | {overhead or '— | —'} |")

    lines += ["", "## Targets (issue 17, ratios from this run)", ""]
    verdict = lambda ok: "met" if ok else "**missed**"
    for level in args.levels.split():
        nghttpx, litellm = find("nghttpx", level), find("litellm", level)
        for name in ("sluice", "sluice-rpc"):
            row = find(name, level)
            if not row:
                continue
            where = f"{name}, {row['streams_in_flight']} streams, a delta per {row['interval_ms']} ms"
            if nghttpx:
                ratio = row["cpu_us_per_delta"] / nghttpx["cpu_us_per_delta"]
                lines.append(f"- {where}: CPU per delta {ratio:.2f}× nghttpx's (target ≤ 1.5×): {verdict(ratio <= 1.5)}")
            if litellm:
                ratio = row["cpu_us_per_delta"] / litellm["cpu_us_per_delta"]
                lines.append(f"- {where}: CPU per delta 1/{1 / ratio:.0f} of LiteLLM's (target ≤ 1/100): {verdict(ratio <= 0.01)}")
            share = row["sluice_share_ms"]
            if share:
                lines.append(f"- {where}: Sluice's own share p99 ≤ {share['p99_ms_at_most']:g} ms (target ≤ 1 ms): "
                             f"{verdict(share['p99_ms_at_most'] <= 1)}")
            per_stream = row["rss_kib_per_stream"]
            if row["streams_in_flight"] >= 10000:
                lines.append(f"- {where}: {per_stream:.1f} KiB per stream in flight (target ≤ 32 KiB): {verdict(per_stream <= 32)}")
            if nghttpx:
                limit = nghttpx["rss_kib_per_stream"] + 16
                lines.append(f"- {where}: {per_stream:.1f} KiB per stream vs nghttpx's {nghttpx['rss_kib_per_stream']:.1f} + 16 "
                             f"(target): {verdict(per_stream <= limit)}")
    if "sluice" in ttft and direct:
        overhead = ttft["sluice"]["p50"] - direct["p50"]
        if overhead < 0:
            # Negative: the direct calls (TLS in the Python client) cost more than the gateway adds; no verdict.
            lines.append(f"- sluice: time-to-first-token overhead p50 {overhead:.2f} ms (target ≤ 0.5 ms): not shown by this run "
                         "(calling the simulator directly, with TLS in the Python client, was slower than through a gateway)")
        else:
            lines.append(f"- sluice: time-to-first-token overhead p50 {overhead:.2f} ms (target ≤ 0.5 ms): {verdict(overhead <= 0.5)}")
        if "nghttpx" in ttft:
            lines.append(f"- sluice: time to first token p50 {ttft['sluice']['p50'] - ttft['nghttpx']['p50']:+.2f} ms, "
                         f"p99 {ttft['sluice']['p99'] - ttft['nghttpx']['p99']:+.2f} ms against nghttpx's (same client, same protocol)")
    if missing:
        lines += ["", "Not measured (the run was stopped before they finished): " + "; ".join(missing) + "."]
    failures = {r["gateway"] + " " + r["level"]: r["errors"] for r in rows if r["failed"]}
    if failures:
        lines += ["", "Failed answers: " + json.dumps(failures)]
    open(f"{args.dest}/RESULTS.md", "w").write("\n".join(lines) + "\n")
    json.dump(raw, open(f"{args.dest}/RESULTS.json", "w"), indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
