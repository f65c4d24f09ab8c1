"""Checks of deploy/: the Dockerfile, Compose files, Kubernetes manifests and Grafana dashboard.

No container engine is needed. What is checked:
- hadolint finds nothing in deploy/Dockerfile (only the ignores listed in ALLOWED_HADOLINT_IGNORES);
- the runtime stage's apt-get packages provide every shared library `ldd` lists for a release build
  made with the Dockerfile's own `swift build` command;
- the commands the image, Compose and Kubernetes run are accepted by the real binary, its health
  check and gRPC probes answer as the manifests assume, and it drains and exits 0 on SIGTERM;
- the Compose files validate against the Compose Specification schema;
- the manifests validate (strict) against Kubernetes' schemas, kustomization.yaml lists them all;
- the dashboard queries only metrics Sluice exports, and covers the ones operators need.

The release binary: SLUICE_RELEASE_BIN, else built here with the Dockerfile's flags into
.build-deploy-static (about 5 minutes from scratch).
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import jsonschema
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE_FILES = [DEPLOY / "docker-compose.yml", DEPLOY / "docker-compose.anthropic.yml"]
VENV_BIN = Path(sys.executable).parent

# The oldest Kubernetes the manifests support (gRPC probes are GA in 1.27) and the newest that
# kubernetes-validate (pinned in requirements.txt) ships schemas for.
KUBERNETES_VERSIONS = ["1.27.0", "1.37.0"]

# hadolint rules ignored inline in the Dockerfile, each with its reason next to it.
ALLOWED_HADOLINT_IGNORES = {"DL3008"}  # apt versions unpinned: bookworm security updates; pin the base by digest

# The packages in debian:bookworm-slim, the runtime base image: Debian's "minbase" set (Priority:
# required, plus apt), which is what the image is built from. Read off `debootstrap --variant=minbase
# bookworm` (Debian 12.15) with `dpkg-query -W`. A library from one of these needs no apt-get install.
BOOKWORM_SLIM_PACKAGES = set("""
adduser apt base-files base-passwd bash bsdutils coreutils dash debconf debian-archive-keyring
debianutils diffutils dpkg e2fsprogs findutils gcc-12-base gpgv grep gzip hostname
init-system-helpers libacl1 libapt-pkg6.0 libattr1 libaudit-common libaudit1 libblkid1 libbz2-1.0
libc-bin libc6 libcap-ng0 libcap2 libcom-err2 libcrypt1 libdb5.3 libdebconfclient0 libext2fs2 libffi8
libgcc-s1 libgcrypt20 libgmp10 libgnutls30 libgpg-error0 libhogweed6 libidn2-0 liblz4-1 liblzma5
libmd0 libmount1 libnettle8 libp11-kit0 libpam-modules libpam-modules-bin libpam-runtime libpam0g
libpcre2-8-0 libseccomp2 libselinux1 libsemanage-common libsemanage2 libsepol2 libsmartcols1 libss2
libstdc++6 libsystemd0 libtasn1-6 libtinfo6 libudev1 libunistring2 libuuid1 libxxhash0 libzstd1
login logsave mawk mount ncurses-base ncurses-bin passwd perl-base sed sysvinit-utils tar tzdata
usr-is-merged util-linux util-linux-extra zlib1g
""".split())

# What Sluice exports (README); the dashboard must use only these, and must show the core ones.
KNOWN_METRICS = {
    "sluice_streams_active", "sluice_streams_queued", "sluice_streams_known", "sluice_upstream_open_transfers",
    "sluice_streams_completed_total", "sluice_upstream_retries_total", "sluice_streams_abandoned_cleaned_total",
    "sluice_streams_rejected_total", "sluice_time_to_first_token_seconds_bucket",
    "sluice_time_to_first_token_seconds_sum", "sluice_time_to_first_token_seconds_count",
    "process_resident_memory_bytes", "process_open_fds",
}
DASHBOARD_MUST_SHOW = {
    "sluice_streams_active", "sluice_streams_queued", "sluice_streams_completed_total",
    "sluice_upstream_retries_total", "sluice_time_to_first_token_seconds_bucket",
    "process_resident_memory_bytes", "process_open_fds",
}


# MARK: Parsing helpers


def dockerfile_instructions() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) for each instruction, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append(current + raw)
        current = ""
    result, stage = [], ""
    for line in lines:
        instruction, _, arguments = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.search(r"\bAS\s+(\S+)", arguments, re.IGNORECASE)
            stage = match.group(1) if match else ""
        result.append((stage, instruction, arguments.strip()))
    return result


def instruction(name: str, stage: str | None = None) -> list[str]:
    return [args for s, i, args in dockerfile_instructions() if i == name and (stage is None or s == stage)]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(a, str) for a in value), arguments
    return value


def runtime_apt_packages() -> list[str]:
    """Packages named by `apt-get install` in the runtime stage."""
    packages = []
    for run in instruction("RUN", "runtime"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if "apt-get" in words and "install" in words:
                after = words[words.index("install") + 1:]
                packages += [w for w in after if not w.startswith("-")]
    assert packages, "no apt-get install in the runtime stage"
    return packages


def dockerfile_swift_build() -> list[str]:
    """The build stage's `swift build …` command."""
    for run in instruction("RUN", "build"):
        for command in run.split("&&"):
            words = shlex.split(command)
            if words[:2] == ["swift", "build"] and "--show-bin-path" not in words:
                return words
    raise AssertionError("no `swift build` in the build stage")


def load_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def deployment() -> dict:
    (doc,) = load_yaml(KUBERNETES / "deployment.yaml")
    return doc


def sluice_container() -> dict:
    (container,) = [c for c in deployment()["spec"]["template"]["spec"]["containers"] if c["name"] == "sluice"]
    return container


def flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", duration)
    assert match, duration
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# MARK: The release binary and a server runner


@pytest.fixture(scope="session")
def release_bin() -> str:
    binary = os.environ.get("SLUICE_RELEASE_BIN")
    if not binary:
        command = dockerfile_swift_build() + ["--scratch-path", str(REPO / ".build-deploy-static")]
        subprocess.run(command, cwd=REPO, check=True)
        path = subprocess.run(command + ["--show-bin-path"], cwd=REPO, check=True, capture_output=True, text=True)
        binary = str(Path(path.stdout.strip()) / "sluice")
    assert os.access(binary, os.X_OK), f"no release binary at {binary}"
    return binary


class Server:
    """`sluice ARGS` with --host/--port rewritten to 127.0.0.1 and a free port."""

    def __init__(self, binary: str, args: list[str], env: dict[str, str] | None = None):
        self.port = free_port()
        args = list(args)
        for flag, value in (("--host", "127.0.0.1"), ("--port", str(self.port))):
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        self.args = args
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        environment.update(env or {})
        self.proc = subprocess.Popen([binary, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=environment, text=True)
        line = self.proc.stdout.readline()
        if "listening" not in line:
            self.proc.kill()
            raise AssertionError(f"sluice {args} did not start: {line}{self.proc.stderr.read()}")

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def servers():
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def health(port: int, service: str) -> str:
    """A gRPC health check, as the kubelet's gRPC probe makes it (protobuf HealthCheckRequest)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def key_files(tmp_path: Path, container_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The container's args with the Secret mount paths replaced by local files."""
    api_key, callers = tmp_path / "api-key", tmp_path / "keys"
    api_key.write_text("sk-ant-test-not-a-key\n")
    callers.write_text("# caller tokens\ntest-token\n")
    args = list(container_args)
    args[args.index("--api-key-file") + 1] = str(api_key)
    args[args.index("--keys-file") + 1] = str(callers)
    return args, {}


# MARK: Dockerfile


def test_hadolint_finds_nothing():
    result = subprocess.run([str(VENV_BIN / "hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    ignores = set()
    for match in re.finditer(r"#\s*hadolint\s+ignore=(\S+)", DOCKERFILE.read_text()):
        ignores.update(match.group(1).split(","))
    assert ignores <= ALLOWED_HADOLINT_IGNORES, f"new hadolint ignores {ignores - ALLOWED_HADOLINT_IGNORES}: justify them here"


def test_dockerfile_runtime_settings():
    stages = [args for _, i, args in dockerfile_instructions() if i == "FROM"]
    assert len(stages) == 2, stages
    build_args = {a.split("=")[0]: a.split("=", 1)[1] for a in instruction("ARG", "") if "=" in a}
    assert re.fullmatch(r"swift:6\.\d+(\.\d+)?-bookworm", build_args["SWIFT_IMAGE"]), build_args
    assert build_args["RUNTIME_IMAGE"] == "debian:bookworm-slim"
    assert "--static-swift-stdlib" in dockerfile_swift_build()
    assert dockerfile_swift_build()[:6] == ["swift", "build", "-c", "release", "--product", "sluice"]
    (user,) = instruction("USER", "runtime")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (for runAsNonRoot)"
    assert instruction("EXPOSE", "runtime") == ["8080"]
    assert instruction("STOPSIGNAL", "runtime") == ["SIGTERM"]
    assert exec_form(instruction("ENTRYPOINT", "runtime")[0]) == ["sluice"]
    cmd = exec_form(instruction("CMD", "runtime")[0])
    assert cmd[0] == "serve" and flag_value(cmd, "--host") == "0.0.0.0"
    assert "--allow-unauthenticated" not in cmd, "the image's default must require caller keys"
    (healthcheck,) = instruction("HEALTHCHECK", "runtime")
    assert " CMD [" in healthcheck, "HEALTHCHECK must use the exec form"
    assert {"ca-certificates", "libnghttp2-14", "libssl3", "libcurl4"} <= set(runtime_apt_packages())


def test_dockerignore_sends_what_the_build_copies():
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") if "*" in ignore else -1] == "*"
    copied = set()
    for copy in instruction("COPY", "build"):
        copied.update(word.rstrip("*") for word in copy.split()[:-1])
    for path in copied:
        assert f"!{path}" in ignore or f"!{path}/" in ignore, f"{path} is COPYed but excluded from the context"
        assert (REPO / path).exists() or path == "Package.resolved", path


def test_runtime_packages_provide_every_shared_library(release_bin):
    ldd = subprocess.run(["ldd", release_bin], check=True, capture_output=True, text=True).stdout
    assert "not found" not in ldd, ldd
    libraries = [path for path in re.findall(r"(/\S+)\s+\(0x", ldd)]
    assert libraries, ldd

    def package_of(path: str) -> str:
        for candidate in (path, os.path.realpath(path)):
            result = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
            if result.returncode == 0:
                return result.stdout.split(":")[0].strip()
        # usrmerge: /lib/x86_64-linux-gnu/… is registered as /usr/lib/… or the other way round
        alternative = path[4:] if path.startswith("/usr/") else "/usr" + path
        result = subprocess.run(["dpkg", "-S", alternative], capture_output=True, text=True)
        assert result.returncode == 0, f"no Debian package owns {path}"
        return result.stdout.split(":")[0].strip()

    def dependencies(package: str) -> set[str]:
        fields = subprocess.run(["dpkg-query", "-W", "-f=${Pre-Depends}, ${Depends}", package],
                                check=True, capture_output=True, text=True).stdout
        names = set()
        for clause in fields.split(","):
            alternatives = [a.strip().split(" ")[0].split(":")[0] for a in clause.split("|") if a.strip()]
            installed = [a for a in alternatives
                         if subprocess.run(["dpkg", "-s", a], capture_output=True).returncode == 0]
            names.update(installed[:1])
        return names

    runtime = set(runtime_apt_packages())
    pulled_in, pending = set(), list(runtime)
    while pending:  # what apt installs along with the named packages (Depends and Pre-Depends)
        package = pending.pop()
        if package in pulled_in:
            continue
        pulled_in.add(package)
        pending += sorted(dependencies(package) - pulled_in)

    owners = {path: package_of(path) for path in libraries}
    missing = {path: package for path, package in owners.items()
               if package not in runtime | BOOKWORM_SLIM_PACKAGES | pulled_in}
    assert not missing, f"libraries whose packages the runtime stage does not install: {missing}"

    # The libraries the binary links directly must come from packages the Dockerfile names (or the
    # base image), not from another package's dependencies.
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]",
                        subprocess.run(["readelf", "-d", release_bin], check=True, capture_output=True, text=True).stdout)
    direct = {owners[path] for path in libraries if os.path.basename(path) in needed}
    assert direct <= runtime | BOOKWORM_SLIM_PACKAGES, f"name these in the runtime stage: {direct - runtime - BOOKWORM_SLIM_PACKAGES}"
    # No Swift runtime shared library: the stdlib and Foundation are linked in statically.
    assert not [path for path in libraries if "libswift" in path or "Foundation" in path], ldd


def test_image_default_command_requires_keys(release_bin, servers):
    cmd = exec_form(instruction("CMD", "runtime")[0])
    refused = subprocess.run([release_bin, *cmd, "--port", "0"], capture_output=True, text=True, timeout=30,
                             env={"PATH": os.environ["PATH"]})
    assert refused.returncode != 0 and "without caller keys" in refused.stderr, refused.stderr
    server = Server(release_bin, cmd, env={"SLUICE_API_KEYS": "test-token"})
    servers.append(server)
    assert health(server.port, "") == "SERVING"
    assert server.stop() == 0


def test_healthcheck_command_tells_a_live_server_from_a_dead_one(release_bin, servers):
    (healthcheck,) = instruction("HEALTHCHECK", "runtime")
    probe = exec_form(healthcheck[healthcheck.index("CMD [") + 4:])
    assert "/dev/tcp/127.0.0.1/8080" in probe[-1]
    server = Server(release_bin, ["serve"])
    servers.append(server)
    command = [probe[0], *[arg.replace("/8080", f"/{server.port}") for arg in probe[1:]]]
    assert subprocess.run(command, timeout=10).returncode == 0
    assert server.stop() == 0
    assert subprocess.run(command, timeout=10, capture_output=True).returncode != 0


# MARK: Kubernetes


def kubernetes_manifests() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.y*ml") if p.name != "kustomization.yaml")


def test_kustomization_lists_every_manifest():
    (kustomization,) = load_yaml(KUBERNETES / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert sorted(resources) == sorted(p.name for p in kubernetes_manifests())
    kinds = {doc["kind"] for p in kubernetes_manifests() for doc in load_yaml(p)}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds
    assert "Secret" not in kinds, "no Secret belongs in the repository"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_strictly(version):
    result = subprocess.run([str(VENV_BIN / "kubernetes-validate"), "--strict", "-k", version,
                             *map(str, kubernetes_manifests())], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == sum(len(load_yaml(p)) for p in kubernetes_manifests())


def test_kustomize_build():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl (with kustomize built in) is not installed")
    result = subprocess.run([kubectl, "kustomize", str(KUBERNETES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(documents) == sum(len(load_yaml(p)) for p in kubernetes_manifests())


def test_deployment_security_probes_and_shutdown():
    pod = deployment()["spec"]["template"]["spec"]
    container = sluice_container()
    args = container["args"]
    assert pod["enableServiceLinks"] is False, "service links inject SLUICE_* variables that Sluice reads as flags"
    assert pod["automountServiceAccountToken"] is False
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    (user,) = instruction("USER", "runtime")
    assert str(pod_security["runAsUser"]) == user.split(":")[0], "runAsUser must match the image's USER"
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]

    # HTTP/1.1 probes (httpGet) can't talk to an HTTP/2-only port: only gRPC probes on the served port.
    port = int(flag_value(args, "--port"))
    assert [p["containerPort"] for p in container["ports"]] == [port]
    for probe in ("readinessProbe", "livenessProbe"):
        assert set(container[probe]) & {"httpGet", "tcpSocket", "exec", "grpc"} == {"grpc"}, probe
        assert container[probe]["grpc"]["port"] == port

    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = seconds(flag_value(args, "--drain-timeout") or "30s")
    assert pod["terminationGracePeriodSeconds"] > drain + float(pre_stop[1])

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["secret"] for v in pod["volumes"]}
    for flag in ("--api-key-file", "--keys-file"):
        path = Path(flag_value(args, flag))
        (name,) = [n for n, mount in mounts.items() if Path(mount) == path.parent]
        assert path.name in [item["path"] for item in volumes[name]["items"]], flag
        assert volumes[name]["defaultMode"] & 0o007 == 0, "secret files must not be world-readable"


def test_service_pdb_and_hpa_match_the_deployment():
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    (service,) = load_yaml(KUBERNETES / "service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["appProtocol"] == "kubernetes.io/h2c"
    assert port["targetPort"] in [p["name"] for p in sluice_container()["ports"]]
    (pdb,) = load_yaml(KUBERNETES / "poddisruptionbudget.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (hpa,) = load_yaml(KUBERNETES / "horizontalpodautoscaler.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment()["metadata"]["name"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2 and deployment()["spec"]["replicas"] >= hpa["spec"]["minReplicas"]


def json_patch(document: dict, operations: list[dict]) -> dict:
    """RFC 6902's test, add and replace (what deploy/kubernetes-redis uses), as kustomize applies them."""
    for operation in operations:
        *parents, last = [part for part in operation["path"].split("/")[1:]]
        target = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        key = int(last) if isinstance(target, list) else last
        if operation["op"] == "test":
            assert target[key] == operation["value"], f"the base moved {operation['path']}: {target[key]!r}"
        elif operation["op"] in ("add", "replace"):
            target[key] = operation["value"]
        else:
            raise AssertionError(f"unexpected op {operation['op']}")
    return document


def test_the_redis_overlay_sizes_the_grace_period_for_hand_off():
    """With the shared store a pod hands its streams off after --handoff-after and exits: the grace period covers the
    preStop sleep and a --drain-timeout that is itself well above the hand-off, not the longest stream."""
    (kustomization,) = load_yaml(DEPLOY / "kubernetes-redis" / "kustomization.yaml")
    (patch,) = [p for p in kustomization["patches"] if p["target"]["kind"] == "Deployment"]
    pod = json_patch(deployment(), yaml.safe_load(patch["patch"]))["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "sluice"]
    env = {variable["name"]: variable for variable in container["env"]}
    assert env["SLUICE_STORE"]["valueFrom"]["secretKeyRef"] == {"name": "sluice-store", "key": "url"}
    handoff = seconds(env["SLUICE_HANDOFF_AFTER"]["value"])
    drain = seconds(flag_value(container["args"], "--drain-timeout"))
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert handoff + 3 <= drain, "the hand-off (and the store's acknowledgement) must fit well inside the drain"
    assert pre_stop + drain < pod["terminationGracePeriodSeconds"] <= pre_stop + drain + 10
    assert pod["terminationGracePeriodSeconds"] < deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


def test_deployment_args_run_and_probes_follow_the_drain(release_bin, servers, tmp_path):
    """The container's args start the real binary; the kubelet's gRPC probes see SERVING, then
    NOT_SERVING while a stream drains after SIGTERM; the process exits 0."""
    container = sluice_container()
    args, env = key_files(tmp_path, container["args"])
    args[args.index("--drain-timeout") + 1] = "20s"
    server = Server(release_bin, args, env=env)
    servers.append(server)
    readiness = container["readinessProbe"]["grpc"].get("service", "")
    liveness = container["livenessProbe"]["grpc"].get("service", "")
    assert health(server.port, readiness) == "SERVING"
    assert health(server.port, liveness) == "SERVING"

    # HTTP/1.1, as an httpGet probe would send it, is answered too.
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as s:
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.1 200 ")

    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stream = channel.unary_stream("/sluice.v1.Synthetic/Stream", request_serializer=lambda m: json.dumps(m).encode(),
                                  response_deserializer=lambda b: b)
    call = stream({"frames": 30, "size": 16, "interval_ms": 100}, metadata=[("authorization", "Bearer test-token")],
                  timeout=30)
    frames = [next(call)]
    received = threading.Thread(target=lambda: frames.extend(call), daemon=True)
    received.start()
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while True:
        try:
            status = health(server.port, readiness)
        except grpc.RpcError as error:  # a closed listener is also "not ready" to the kubelet
            status = error.code().name
        if status != "SERVING" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status in ("NOT_SERVING", "UNAVAILABLE"), status
    received.join(20)
    channel.close()
    assert len(frames) == 30, "the in-flight stream must finish during the drain"
    assert server.proc.wait(20) == 0


# MARK: Compose


def compose_schema() -> dict:
    schema = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(schema.read_text())


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_matches_the_compose_specification(path):
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert not errors, errors


def test_compose_schema_rejects_a_typo():
    """The schema check is not vacuous."""
    schema = compose_schema()
    document = yaml.safe_load(COMPOSE_FILES[0].read_text())
    document["services"]["sluice"]["stop_grace_periode"] = "40s"
    assert not jsonschema.validators.validator_for(schema)(schema).is_valid(document)


def test_compose_services():
    base = yaml.safe_load(COMPOSE_FILES[0].read_text())
    override = yaml.safe_load(COMPOSE_FILES[1].read_text())
    sluice = base["services"]["sluice"]
    assert seconds(sluice["stop_grace_period"]) > seconds(flag_value(sluice["command"], "--drain-timeout") or "30s")
    assert all(port.startswith("127.0.0.1:") for port in sluice["ports"]), "publish on the host's loopback only"
    assert sluice["read_only"] is True and sluice["cap_drop"] == ["ALL"]
    # The Compose health check is the image's (Compose needs $$ for a literal $).
    (healthcheck,) = instruction("HEALTHCHECK", "runtime")
    image_probe = exec_form(healthcheck[healthcheck.index("CMD [") + 4:])
    assert sluice["healthcheck"]["test"] == ["CMD", *[a.replace("$", "$$") for a in image_probe]]
    loadtest = base["services"]["loadtest"]
    assert loadtest["profiles"] == ["loadtest"] and loadtest["command"][0] == "loadtest"
    assert flag_value(loadtest["command"], "--target") == "http://sluice:8080"
    # The real-API override reads both keys from Docker secrets and drops --allow-unauthenticated.
    command = override["services"]["sluice"]["command"]
    assert "--allow-unauthenticated" not in command
    for flag, secret in (("--api-key-file", "anthropic_api_key"), ("--keys-file", "sluice_api_keys")):
        assert flag_value(command, flag) == f"/run/secrets/{secret}"
        assert secret in override["services"]["sluice"]["secrets"] and secret in override["secrets"]
    secrets_dir = DEPLOY / "secrets"
    assert (secrets_dir / ".gitignore").read_text().split() == ["*", "!.gitignore"]


def test_compose_commands_run(release_bin, servers, tmp_path):
    base = yaml.safe_load(COMPOSE_FILES[0].read_text())
    server = Server(release_bin, base["services"]["sluice"]["command"])
    servers.append(server)
    assert health(server.port, "") == "SERVING"
    assert server.stop() == 0
    command = yaml.safe_load(COMPOSE_FILES[1].read_text())["services"]["sluice"]["command"]
    args, env = key_files(tmp_path, command)
    server = Server(release_bin, args, env=env)
    servers.append(server)
    assert health(server.port, "") == "SERVING"
    assert server.stop() == 0


CLUSTER_REPLICAS = ["sluice-a", "sluice-b", "sluice-c"]


def balancer_backends(command: list[str]) -> list[tuple[str, int, list[str]]]:
    """nghttpx's --backend=HOST,PORT;PATTERN;PARAMS… as (host, port, params)."""
    backends = []
    for arg in command:
        if arg.startswith("--backend="):
            address, _pattern, *params = arg.removeprefix("--backend=").split(";")
            host, port = address.rsplit(",", 1)
            backends.append((host, int(port), params))
    return backends


def test_compose_cluster_profile():
    """--profile cluster: Redis, three replicas on it with distinct ids, nghttpx balancing h2 round robin over them."""
    services = yaml.safe_load(COMPOSE_FILES[0].read_text())["services"]
    cluster = {name for name, service in services.items() if "cluster" in service.get("profiles", [])}
    assert cluster == {"redis", "balancer", *CLUSTER_REPLICAS}
    assert "profiles" not in services["sluice"], "the default service runs without a profile"
    (healthcheck,) = instruction("HEALTHCHECK", "runtime")
    image_probe = exec_form(healthcheck[healthcheck.index("CMD [") + 4:])
    ids = set()
    for name in CLUSTER_REPLICAS:
        replica = services[name]
        command = replica["command"]
        assert command[0] == "serve" and flag_value(command, "--port") == "8080"
        assert flag_value(command, "--store") == "redis://redis:6379"
        ids.add(flag_value(command, "--replica-id"))
        assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
        assert replica["read_only"] is True and replica["cap_drop"] == ["ALL"] and "ports" not in replica
        assert replica["healthcheck"]["test"] == ["CMD", *[a.replace("$", "$$") for a in image_probe]]
        assert seconds(replica["stop_grace_period"]) > seconds(flag_value(command, "--drain-timeout") or "30s")
    assert len(ids) == len(CLUSTER_REPLICAS), "each replica needs its own --replica-id"
    assert services["redis"]["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]
    balancer = services["balancer"]
    command = balancer["command"]
    assert command[0] == "nghttpx" and "--conf=/dev/null" in command
    backends = balancer_backends(command)
    assert sorted(host for host, _, _ in backends) == CLUSTER_REPLICAS
    for _, port, params in backends:
        assert port == 8080 and "proto=h2" in params and "dns" in params
        assert not [p for p in params if p.startswith("affinity=") and p != "affinity=none"], "round robin, no stickiness"
    assert set(balancer["depends_on"]) == set(CLUSTER_REPLICAS)
    assert balancer["ports"] == ["127.0.0.1:8081:8081"] and "--frontend=*,8081;no-tls" in command
    assert "nghttp2-proxy" in balancer["build"]["dockerfile_inline"]


def test_compose_cluster_commands_run(release_bin, servers, tmp_path):
    """The cluster profile's commands, without a container engine: redis-server, the three replicas' commands
    against it and nghttpx with the balancer's command (host names and ports rewritten to this machine's). Through
    the balancer, gRPC health answers, a stream runs, and reading it again lands on other replicas (round robin)
    that serve it from the store, identical each time."""
    for tool in ("redis-server", "nghttpx"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed (make test-deps installs it)")
    services = yaml.safe_load(COMPOSE_FILES[0].read_text())["services"]
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                              "--save", "", "--appendonly", "no"], stdout=subprocess.PIPE, text=True)
    balancer = None
    try:
        for line in redis.stdout:
            if "Ready to accept connections" in line:
                break
        replicas = {}
        for name in CLUSTER_REPLICAS:
            command = [arg.replace("redis://redis:6379", f"redis://127.0.0.1:{redis_port}") for arg in services[name]["command"]]
            replicas[name] = Server(release_bin, command)
            servers.append(replicas[name])
        port = free_port()
        command = []
        for arg in services["balancer"]["command"]:
            if arg.startswith("--frontend="):
                arg = f"--frontend=127.0.0.1,{port};no-tls"
            for name, replica in replicas.items():
                arg = arg.replace(f"--backend={name},8080", f"--backend=127.0.0.1,{replica.port}")
            command.append(arg.replace(";dns", ""))
        balancer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert balancer.poll() is None and time.monotonic() < deadline, balancer.stderr.read() if balancer.poll() else "no listener"
                time.sleep(0.05)
        for replica in replicas.values():
            while health(replica.port, "") != "SERVING":  # ready once its store is reached
                time.sleep(0.05)
        assert health(port, "") == "SERVING"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            send = channel.unary_stream("/sluice.v1.StreamingService/SendMessage",
                                        request_serializer=lambda m: json.dumps(m).encode(), response_deserializer=json.loads)
            resume = channel.unary_stream("/sluice.v1.StreamingService/Resume",
                                          request_serializer=lambda m: json.dumps(m).encode(), response_deserializer=json.loads)
            events = list(send({"model": "claude-sonnet-4-5", "max_tokens": 32,
                                "messages": [{"role": "user", "content": "hello"}]}, timeout=20))
            assert events[-1]["type"] == "stream_complete"
            stream_id = events[0]["stream_id"]
            # Round robin: of three reads, at least two land on replicas that do not run the stream.
            for _ in CLUSTER_REPLICAS:
                assert list(resume({"stream_id": stream_id, "after_seq": 0}, timeout=20)) == events
    finally:
        if balancer:
            balancer.kill()
            balancer.wait()
        redis.kill()
        redis.wait()


# MARK: Grafana


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    expressions = []
    ids = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            expressions.append(target["expr"])
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "job", "instance"}
    return expressions


def test_dashboard_uses_sluice_metrics():
    used = set()
    for expression in dashboard_expressions():
        used.update(name for name in re.findall(r"\b((?:sluice|process)_[a-z_]+)\b", expression))
    assert used <= KNOWN_METRICS, f"unknown metrics: {used - KNOWN_METRICS}"
    assert DASHBOARD_MUST_SHOW <= used, f"not shown: {DASHBOARD_MUST_SHOW - used}"


def test_dashboard_expressions_parse():
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": expression.replace("$__rate_interval", "5m").replace("$job", ".*")
         .replace("$instance", ".*")} for i, expression in enumerate(dashboard_expressions())]}]}
    result = subprocess.run([promtool, "check", "rules", "/dev/stdin"], input=yaml.safe_dump(rules),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_live_metrics_include_what_the_dashboard_reads(release_bin, servers):
    curl = shutil.which("curl")
    if not curl:
        pytest.skip("curl is not installed")
    server = Server(release_bin, ["serve"])
    servers.append(server)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        send = channel.unary_stream("/sluice.v1.StreamingService/SendMessage",
                                    request_serializer=lambda m: json.dumps(m).encode(), response_deserializer=json.loads)
        events = list(send({"model": "claude-sonnet-4-5", "max_tokens": 32,
                            "messages": [{"role": "user", "content": "hello"}]}, timeout=20))
        assert events[-1]["type"] == "stream_complete"
    text = subprocess.run([curl, "-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{server.port}/metrics"],
                          check=True, capture_output=True, text=True).stdout
    exported = set(re.findall(r"^([a-z_]+)(?:\{| )", text, re.MULTILINE))
    # Counters created on first increment (retries, rejected, abandoned) need not be there yet.
    assert DASHBOARD_MUST_SHOW - {"sluice_upstream_retries_total"} <= exported, text
    assert server.stop() == 0
