"""`sluice loadtest` against a live server: it paces stream starts at --rate and reports what it measured."""
import json
import subprocess


def test_loadtest_paces_starts_at_the_rate_and_measures_end_to_end(sluice_bin, start_server):
    server = start_server()
    scenario = {"output_tokens": 6, "token_interval_ms": 1, "stamp_deltas": True, "seed": 3}
    run = subprocess.run(
        [sluice_bin, "loadtest", "--target", f"http://127.0.0.1:{server.port}", "--method", "send-message",
         "--streams", "6", "--concurrency", "6", "--rate", "10", "--event-loops", "1",
         "--simulation", json.dumps(scenario), "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["streams"]["ok"] == 6 and report["streams"]["failed"] == 0, report["streams"]
    # At 10 starts a second the sixth stream starts 0.5 s in: the pacing clock ran, and not faster.
    assert report["wall_seconds"] >= 0.5, report["wall_seconds"]
    assert report["latency_ms"]["end_to_end"]["count"] > 0, "stamped deltas were not measured"
