# Sluice: build, run and test.
#   make deps    install the Debian packages that building and serving need (apt-get; sudo only when not root)
#   make test-deps  deps plus what only the tests use (h2load/nghttp, curl, openssl, Chromium, python3-venv)
#   make build   release build of the sluice executable
#   make run     deps + build + `sluice serve $(ARGS)`, e.g. make run ARGS="--port 9000"
#   make venv    .venv with the pinned interop test requirements
#   make test    test-deps + format check + debug build + swift test + venv + interop tests (pytest Tests/Interop) + fuzz smoke + deploy checks + test-tsan
#   make chaos   1,000 streams with random upstream faults (CHAOS_STREAMS, CHAOS_SEED); make test runs 200
#   make chaos-cluster  three replicas on Redis: 1,000 streams with upstream faults and random replica kills
#                (CHAOS_CLUSTER_STREAMS, CHAOS_SEED), then a rolling restart under 300 streams; make test runs 60
#   make soak    Benchmarks/soak/run.sh: 100,000 streams, server memory and descriptors → RESULTS.md
#   make test-tsan  the concurrent code's tests under ThreadSanitizer
#   make hostile    the full-length hostile HTTP/2 client tests (Tests/Interop/test_hostile.py)
#   make format     rewrite the Swift sources in the house style (.swift-format); make test checks it (format-check)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
REQUIREMENTS := Tests/Interop/requirements.txt
# The binary the interop tests start; override with SLUICE_BIN=/path/to/sluice.
SLUICE_BIN ?= $(CURDIR)/.build/debug/sluice
ARGS ?=
# Building and serving: the C libraries, and the console's JavaScript libraries read at run time.
SERVE_PACKAGES := libnghttp2-dev libssl-dev libcurl4-openssl-dev libhttp-parser-dev libhiredis-dev zlib1g-dev libjs-marked libjs-highlight.js node-dompurify
# Only the tests: real clients (h2load, nghttp, curl), certificates (openssl), the console's browser.
TEST_PACKAGES := nghttp2-client curl openssl chromium chromium-driver redis-server redis-tools nghttp2-proxy
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

DEPLOY_VENV := .venv-deploy
DEPLOY_REQUIREMENTS := Tests/Deploy/requirements.txt

FUZZ_TARGETS := FuzzEnvelope FuzzSSE FuzzRequest FuzzTimeouts FuzzHTTP1Request FuzzGzip
FUZZ_SECONDS ?= 60
FUZZ_BUILD := .build-fuzz

.PHONY: format format-check deps test-deps build run venv test deploy-venv test-deploy fuzz fuzz-smoke chaos chaos-cluster soak test-tsan hostile

# Installs whichever of $(1) are missing (and python3-venv when $(2) is "venv" and Python lacks it).
define install-missing
	@missing=""; \
	for package in $(1); do \
	  dpkg -s "$$package" >/dev/null 2>&1 || missing="$$missing $$package"; \
	done; \
	if [ "$(2)" = venv ] && ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1 && ! dpkg -s python3-venv >/dev/null 2>&1; then \
	  missing="$$missing python3-venv"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  echo "Installing:$$missing"; \
	  $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi
endef

deps:
	$(call install-missing,$(SERVE_PACKAGES),)

test-deps:
	$(call install-missing,$(SERVE_PACKAGES) $(TEST_PACKAGES),venv)

build:
	swift build -c release --product sluice

run: deps build
	.build/release/sluice serve $(ARGS)

venv: $(VENV)/.requirements-installed

$(VENV)/.requirements-installed: $(REQUIREMENTS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r $(REQUIREMENTS)
	touch $@

# Every Swift file of the project, for swift-format (the toolchain's `swift format`).
SWIFT_SOURCES := Package.swift Sources Tests Fuzz/Package.swift Fuzz/Sources Benchmarks/upstream/Package.swift \
  Benchmarks/upstream/Sources Benchmarks/transport/GRPCSwiftPeer/Package.swift Benchmarks/transport/GRPCSwiftPeer/Sources

format:
	swift format --in-place --recursive $(SWIFT_SOURCES)

format-check:
	@swift format lint --strict --recursive $(SWIFT_SOURCES) || { echo "swift-format: run 'make format'"; exit 1; }

# Serial: some tests time live streams (pings, idle timeouts), and CPU-heavy tests running beside
# them on a 2-core machine can starve Swift's cooperative pool for seconds.
test: test-deps format-check
	swift build
	swift test --no-parallel
	$(MAKE) venv
	SLUICE_BIN="$(SLUICE_BIN)" $(VENV)/bin/python -m pytest Tests/Interop
	$(MAKE) fuzz-smoke
	$(MAKE) test-deploy
	$(MAKE) test-tsan

deploy-venv: $(DEPLOY_VENV)/.requirements-installed

$(DEPLOY_VENV)/.requirements-installed: $(DEPLOY_REQUIREMENTS)
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --quiet -r $(DEPLOY_REQUIREMENTS)
	touch $@

# Checks of deploy/: hadolint, Kubernetes and Compose schemas, ldd vs. the image's runtime packages,
# probes against the release binary (built the Dockerfile's way into .build-deploy-static).
test-deploy: test-deps deploy-venv
	$(DEPLOY_VENV)/bin/python -m pytest Tests/Deploy

# libFuzzer (with AddressSanitizer) on the parsers of untrusted bytes, FUZZ_SECONDS each, starting from
# the committed seeds in Fuzz/Corpus; new inputs and any crash land in $(FUZZ_BUILD)/.
# SwiftPM does not notice files added to or removed from a path dependency (the sluice package, for Fuzz/):
# the scratch directory starts afresh whenever the list of source files changed.
fuzz:
	@listing=$$(find Sources -name '*.swift' | sort | md5sum | cut -d' ' -f1); \
	if [ "$$(cat $(FUZZ_BUILD)/.source-listing 2>/dev/null)" != "$$listing" ]; then \
	  rm -rf $(FUZZ_BUILD) && mkdir -p $(FUZZ_BUILD) && echo "$$listing" >$(FUZZ_BUILD)/.source-listing; \
	fi
	cd Fuzz && swift build --sanitize fuzzer --sanitize address --scratch-path ../$(FUZZ_BUILD)
	@set -o pipefail; bin=$$(cd Fuzz && swift build --sanitize fuzzer --sanitize address --scratch-path ../$(FUZZ_BUILD) --show-bin-path); \
	for target in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$target $(FUZZ_BUILD)/crashes; \
	  echo "fuzzing $$target for $(FUZZ_SECONDS)s"; \
	  $$bin/$$target -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1 \
	    -artifact_prefix=$(FUZZ_BUILD)/crashes/$$target- $(FUZZ_BUILD)/corpus/$$target Fuzz/Corpus/$$target 2>&1 \
	    | grep -E '^(Done|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY)' || exit 1; \
	done

# The short run `make test` does.
fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=5

# The full chaos run of Tests/Interop/test_chaos.py; a failure names its seed: make chaos CHAOS_SEED=….
CHAOS_STREAMS ?= 1000
chaos: test-deps
	swift build
	$(MAKE) venv
	INTEROP_CHAOS=full INTEROP_CHAOS_STREAMS=$(CHAOS_STREAMS) $(if $(CHAOS_SEED),INTEROP_CHAOS_SEED=$(CHAOS_SEED)) \
	  SLUICE_BIN="$(SLUICE_BIN)" $(VENV)/bin/python -m pytest -s Tests/Interop/test_chaos.py::test_chaos_full

# Tests/Interop/test_chaos_cluster.py's run and the long rolling restart (300 streams) of test_rolling_restart.py.
CHAOS_CLUSTER_STREAMS ?= 1000
chaos-cluster: test-deps
	swift build
	$(MAKE) venv
	INTEROP_CHAOS_CLUSTER=full INTEROP_CHAOS_CLUSTER_STREAMS=$(CHAOS_CLUSTER_STREAMS) INTEROP_ROLLING_STREAMS=300 \
	  $(if $(CHAOS_SEED),INTEROP_CHAOS_SEED=$(CHAOS_SEED)) SLUICE_BIN="$(SLUICE_BIN)" \
	  $(VENV)/bin/python -m pytest -s Tests/Interop/test_chaos_cluster.py Tests/Interop/test_rolling_restart.py

# Release build, 100,000 streams, writes Benchmarks/soak/RESULTS.md (several minutes).
soak: test-deps
	Benchmarks/soak/run.sh

# ThreadSanitizer on the tests of concurrent code: transport, engine, upstream client and simulator
# (the pure parsers' tests would only be slower). -DSLUICE_TSAN swaps Synchronization.Mutex for a
# pthread mutex TSan can see (Sources/SluiceWire/ThreadSanitizerMutex.swift says why). Any report
# fails the run: TSan makes the test process exit non-zero.
TSAN_BUILD := .build-tsan
TSAN_TESTS := SluiceIOTests|SluiceStoreTests|SluiceTransportTests|SluiceServiceTests|SluiceClientTests|SluiceEngineTests|SluiceUpstreamTests.UpstreamClientTests|SluiceSimulatorTests
test-tsan: test-deps
	swift build --build-tests --sanitize=thread -Xswiftc -DSLUICE_TSAN --scratch-path $(TSAN_BUILD)
	swift test --skip-build --no-parallel --sanitize=thread -Xswiftc -DSLUICE_TSAN --scratch-path $(TSAN_BUILD) \
	  --filter '$(TSAN_TESTS)'

# The hostile HTTP/2 clients at full length (100,000 rapid resets, 10,000 idle connections, 4,000
# never-read streams, …); `make test` runs the short versions. Prints each attack's figures.
hostile: test-deps
	swift build
	$(MAKE) venv
	HOSTILE_SCALE=full SLUICE_BIN="$(SLUICE_BIN)" $(VENV)/bin/python -m pytest Tests/Interop/test_hostile.py -s --timeout 900
