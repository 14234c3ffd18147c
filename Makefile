# zenvoy: `make run` starts the local stack, `make test` runs every test.
# Both install what they need first (scripts/setup.sh).

CARGO ?= cargo
BIN := target/debug

.PHONY: fuzz all setup build run test lint unit e2e monitoring dashboards images bench chaos fmt clean

all: build

setup:
	@scripts/setup.sh

build:
	$(CARGO) build --workspace --bins

# The local stack: `zenvoy run` (controller and holder in one process, Envoy as its
# child) with Envoy on 127.0.0.1:10000 in front of an example HTTP service that starts
# on the first connection and stops after 15 s idle (examples/local.yaml); logs in
# run/logs/. Ctrl-C stops all of it.
run: setup build
	$(BIN)/zenvoy run --config examples/local.yaml

# Everything CI runs: the dashboards and alerts checks, format, lints, unit tests,
# end-to-end tests with a real Envoy (and a real Prometheus: e2e/tests/dashboards.rs).
# One `--workspace` build for all of it, so features unify and nothing builds twice.
test: setup monitoring lint
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace --lib --bins

# End-to-end tests (e2e/tests/, package zenvoy-e2e): these twelve. `cargo test -p
# zenvoy-e2e` runs every file in e2e/tests/ and builds no benchmark and no chaos suite.
e2e: setup build
	$(CARGO) test --workspace --test e2e --test holder --test transparent --test kubernetes --test fake_kube --test deploy --test images \
	  --test cli --test readiness --test grpc --test real_servers --test in_cluster

# Dashboards and alerts without a build: the committed dashboard JSON, queries.json and
# deploy/monitoring/ are exactly what dashboards/ generates; deploy/monitoring/ is valid
# against the prometheus-operator CRD schemas and the Kubernetes ones; the rules pass
# `promtool check rules` and their unit tests (each alert fires, a healthy system is quiet).
monitoring: setup
	cd dashboards && npm run --silent check
	cd dashboards && npm run --silent validate
	promtool check rules alerts/zenvoy.rules.yml
	promtool test rules alerts/zenvoy.rules.test.yml

# Regenerate the dashboard JSON and deploy/monitoring/ after editing dashboards/src or
# alerts/zenvoy.rules.yml.
dashboards: setup
	cd dashboards && npm run --silent build

# The container images deploy/ runs, from the release binaries: buildah, FROM scratch,
# tagged localhost/zenvoy-controller:<version> and localhost/zenvoy-holder:<version> (the
# version the binaries print), and written to target/images/ as archives to load into a
# cluster or push (docs/kubernetes.md). e2e/tests/images.rs builds the same from the
# debug binaries.
images: setup
	$(CARGO) build --release -p zenvoy-controller -p zenvoy-holder
	scripts/images.sh --archive target/images target/release \
	  "$$(target/release/zenvoy-controller --version | cut -d' ' -f2)"

# The parsers' fuzz targets, each for FUZZ_SECONDS (default 60).
fuzz:
	@scripts/fuzz.sh

# The benchmarks (bench/, package zenvoy-bench; BENCHMARKS.md), release builds.
bench:
	@scripts/setup.sh bench
	$(CARGO) build --workspace --bins --release
	target/release/wake-bench
	target/release/fleet-bench
	target/release/holder-bench

# The chaos suite (chaos/, package zenvoy-chaos; RELIABILITY.md): clients through a
# stack that is being broken (a 10,000-client burst, 1,000 park/wake cycles, kills and
# restarts of every component, a silent Envoy, floods and slow headers at the holder), one
# table at the end, non-zero exit if a client was lost, reset or corrupted. Loopback only;
# under 15 minutes on two cores. Run it as root: the burst needs an open-file limit only
# root can raise. CHAOS_ARGS passes flags, e.g.
# `make chaos CHAOS_ARGS="--only 3 --markdown chaos.md"`.
chaos: setup
	$(CARGO) build --release --workspace --bins
	target/release/chaos $(CHAOS_ARGS)

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf run
