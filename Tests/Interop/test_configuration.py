"""Settings precedence for `sluice serve`: command-line flag > SLUICE_* variable > --config file.

The start-up line states the effective limits, so each test reads them from there."""
import json
import os
import re
import subprocess

import pytest

LIMITS = re.compile(r"limits: (\d+) active, (\d+) queued")


def start_line(sluice_bin, args, env_overrides):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(env_overrides)
    proc = subprocess.Popen([sluice_bin, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        line = proc.stdout.readline()
        if not line:
            return None, proc.wait(timeout=10), proc.stderr.read()
        return line, None, None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "sluice.json"
    path.write_text(json.dumps({"max-active": 7, "max_queued": 9, "tool-root": [str(tmp_path)]}))
    return str(path)


def test_file_sets_values(sluice_bin, config_file, tmp_path):
    line, _, _ = start_line(sluice_bin, ["serve", "--port", "0", "--config", config_file], {})
    assert LIMITS.search(line).groups() == ("7", "9")
    assert f"in {tmp_path}" in line


def test_environment_beats_file_and_flags_beat_both(sluice_bin, config_file):
    line, _, _ = start_line(sluice_bin, ["serve", "--port", "0", "--config", config_file], {"SLUICE_MAX_QUEUED": "11"})
    assert LIMITS.search(line).groups() == ("7", "11")
    line, _, _ = start_line(sluice_bin, ["serve", "--port", "0", "--config", config_file, "--max-queued", "13", "--max-active", "3"],
                            {"SLUICE_MAX_QUEUED": "11"})
    assert LIMITS.search(line).groups() == ("3", "13")


def test_a_flag_replaces_a_repeatable_setting_from_lower_layers(sluice_bin, config_file):
    line, _, _ = start_line(sluice_bin, ["serve", "--port", "0", "--config", config_file, "--tool-root", "/var"], {})
    assert line.rstrip().endswith("in /var")


def test_config_file_from_the_environment(sluice_bin, config_file):
    line, _, _ = start_line(sluice_bin, ["serve", "--port", "0"], {"SLUICE_CONFIG": config_file})
    assert LIMITS.search(line).groups() == ("7", "9")


def test_unknown_variables_are_ignored_with_a_warning(sluice_bin):
    env = {"SLUICE_NO_SUCH_SETTING": "1", "SLUICE_MAX_ACTIVE": "5"}
    env_all = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")} | env
    proc = subprocess.Popen([sluice_bin, "serve", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_all, text=True)
    try:
        assert LIMITS.search(proc.stdout.readline()).group(1) == "5"
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert "ignoring SLUICE_NO_SUCH_SETTING" in stderr


def test_bad_config_files_fail_clearly(sluice_bin, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    _, code, stderr = start_line(sluice_bin, ["serve", "--port", "0", "--config", str(bad)], {})
    assert code != 0 and "must hold a JSON object" in stderr


def test_kubernetes_service_links_are_ignored_with_a_warning(sluice_bin, tmp_path):
    # A Service named "sluice" injects SLUICE_PORT=tcp://…, which would otherwise be read as --port and,
    # beating the file's port, fail the start.
    config = tmp_path / "port.json"
    config.write_text('{"port": 0}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")} | {"SLUICE_PORT": "tcp://10.0.0.1:8080"}
    proc = subprocess.Popen([sluice_bin, "serve", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)
    try:
        assert "sluice listening on 127.0.0.1:" in proc.stdout.readline()
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert "ignoring SLUICE_PORT=tcp://10.0.0.1:8080" in stderr


def test_upstream_streams_per_connection_must_be_positive(sluice_bin):
    _, code, stderr = start_line(sluice_bin, ["serve", "--port", "0", "--upstream-streams-per-connection", "0"], {})
    assert code != 0 and "--upstream-streams-per-connection must be at least 1" in stderr


def test_a_flag_at_its_default_still_beats_the_environment(sluice_bin):
    line, _, _ = start_line(sluice_bin, ["serve", "--port", "0", "--max-active", "256"], {"SLUICE_MAX_ACTIVE": "5"})
    assert LIMITS.search(line).group(1) == "256"


def test_a_repeated_one_value_flag_takes_its_last_value(sluice_bin):
    # The image's default command ends in `--port 8080`; `docker run … --port 0` appends another.
    line, code, stderr = start_line(sluice_bin, ["serve", "--port", "8080", "--max-active", "7", "--port", "0",
                                                 "--max-active", "9"], {})
    assert code is None and line, stderr
    assert LIMITS.search(line).group(1) == "9"
    assert ":8080 " not in line, line


def test_settings_from_every_layer_are_validated(sluice_bin, tmp_path):
    _, code, stderr = start_line(sluice_bin, ["serve", "--port", "0"], {"SLUICE_MAX_ACTIVE": "0"})
    assert code == 64 and "--max-active must be at least 1" in stderr
    config = tmp_path / "timeout.json"
    config.write_text('{"queue-timeout": "soon"}')
    _, code, stderr = start_line(sluice_bin, ["serve", "--port", "0", "--config", str(config)], {})
    assert code == 64 and "--queue-timeout" in stderr and "must be a duration" in stderr, stderr


def test_simulate_reads_the_environment(sluice_bin):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")} | {"SLUICE_PORT": "0", "SLUICE_EVENT_LOOPS": "0"}
    proc = subprocess.run([sluice_bin, "simulate"], capture_output=True, env=env, text=True, timeout=10)
    assert proc.returncode == 64 and "--event-loops must be at least 1" in proc.stderr


def test_a_lease_renewed_no_sooner_than_it_lapses_is_refused(sluice_bin):
    _, code, stderr = start_line(sluice_bin, ["serve", "--port", "0", "--lease-ttl", "1s", "--lease-renew", "1s"], {})
    assert code == 64 and "--lease-renew must be more than 0 and less than --lease-ttl (1s)" in stderr, stderr


def test_messages_server_tools_are_checked_and_stated(sluice_bin, tmp_path):
    _, code, stderr = start_line(sluice_bin, ["serve", "--port", "0", "--messages-server-tools", "read_file"], {})
    assert code == 64 and "--messages-server-tools needs --tool-root" in stderr, stderr
    _, code, stderr = start_line(sluice_bin, ["serve", "--port", "0", "--tool-root", str(tmp_path),
                                              "--messages-server-tools", "read_file,web_search"], {})
    assert code == 64 and "'web_search' is not a Sluice server tool" in stderr, stderr
    line, code, stderr = start_line(sluice_bin, ["serve", "--port", "0", "--tool-root", str(tmp_path)],
                                    {"SLUICE_MESSAGES_SERVER_TOOLS": "search_files, read_file"})
    assert code is None and line, stderr
    assert "(on /v1/messages: read_file, search_files)" in line, line


def test_a_handoff_window_not_under_the_drain_timeout_is_refused_with_a_store(sluice_bin):
    flags = ["serve", "--port", "0", "--store", "redis://127.0.0.1:1", "--drain-timeout", "2s", "--handoff-after", "2s"]
    _, code, stderr = start_line(sluice_bin, flags, {})
    assert code == 64 and "--handoff-after must be 0 or more and less than --drain-timeout (2s)" in stderr, stderr
