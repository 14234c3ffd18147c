# zenvoy: `make run` starts the local stack, `make test` runs every test.
# Both install what they need first (scripts/setup.sh).

CARGO ?= cargo
BIN := target/debug

.PHONY: all setup build run test lint unit e2e monitoring dashboards bench fmt clean

all: build

setup:
	@scripts/setup.sh

build:
	$(CARGO) build --workspace --bins

# The local stack: Envoy on 127.0.0.1:10000 in front of an example HTTP service that
# starts on the first connection and stops after 15 s idle (examples/local.yaml).
run: setup build
	$(BIN)/zenvoy-local --config examples/local.yaml

# Everything CI runs: the dashboards and alerts checks, format, lints, unit tests,
# end-to-end tests with a real Envoy (and a real Prometheus: tests/tests/dashboards.rs).
# One `--workspace` build for all of it, so features unify and nothing builds twice.
test: setup monitoring lint
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace --lib --bins

e2e: setup build
	$(CARGO) test --workspace --test e2e --test holder --test transparent --test kubernetes --test fake_kube --test deploy

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

bench:
	@scripts/setup.sh bench
	$(CARGO) build --workspace --bins --release
	target/release/wake-bench
	target/release/fleet-bench
	target/release/holder-bench

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf run
