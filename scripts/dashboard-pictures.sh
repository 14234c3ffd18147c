#!/usr/bin/env bash
# Makes the README's dashboard pictures (docs/img/zenvoy-*.png) from a real local stack:
# `zenvoy run` with examples/demo.yaml (controller, holder, Envoy, three services), a real
# Prometheus with examples/prometheus.yml (its data in a temporary directory), about six
# minutes of traffic that wakes, serves and parks web and db, keeps a TCP connection open
# on db, fails broken's wakes and sends the holder a connection without a PROXY header
# (twice: a counter's first sample is Prometheus' baseline, so rates show the second);
# then scripts/render-dashboards.py draws both dashboards from what Prometheus scraped.
#
#   make build && scripts/dashboard-pictures.sh         # binaries from target/debug
#   BIN=target/release OUT=/tmp/pictures scripts/dashboard-pictures.sh
#
# Needs Prometheus (make setup) and matplotlib (.venv/bin/pip install matplotlib); uses
# the ports of examples/demo.yaml (Envoy's admin on 9901 among them) and Prometheus on
# PROM_PORT (9090).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
OUT=${OUT:-docs/img}
PROM_PORT=${PROM_PORT:-9090}
PY=.venv/bin/python
"$PY" -c 'import matplotlib' 2>/dev/null ||
  { echo "needs matplotlib: .venv/bin/pip install matplotlib" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$BIN/zenvoy" run --config examples/demo.yaml --dir "$work/run" >"$work/local.log" 2>&1 &
pids+=($!)
prometheus --config.file=examples/prometheus.yml --storage.tsdb.path="$work/prom" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 60); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "timed out waiting for $what" >&2; tail -20 "$work"/*.log >&2; exit 1
}
wait_for "Envoy" curl -sf http://127.0.0.1:9901/ready
wait_for "Prometheus" curl -sf "http://127.0.0.1:$PROM_PORT/-/ready"
start=$(date +%s)
echo "stack and Prometheus up; traffic for about six minutes"

# A TCP client of db that sends a request and keeps the connection open for $1 seconds:
# open connections are activity, so db stays awake that long.
hold_db() {
  "$PY" - "$1" <<'PY'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", 10001))
s.sendall(b"GET / HTTP/1.1\r\nHost: db\r\n\r\n")
s.recv(65536)
time.sleep(float(sys.argv[1]))
PY
}

sleep 20
for round in 1 2 3; do
  echo "round $round: wake web and db"
  curl -s -o /dev/null -w "web first request: %{http_code} in %{time_total}s\n" http://127.0.0.1:10000/
  for _ in $(seq 20); do curl -s -o /dev/null http://127.0.0.1:10000/; sleep 0.5; done
  curl -s -o /dev/null -w "db first request: %{http_code} in %{time_total}s\n" http://127.0.0.1:10001/
  hold_db $((10 * round))
  if [ "$round" -ge 2 ]; then
    echo "round $round: a failing wake, and a connection without a PROXY header"
    "$PY" - <<'PY'
import socket
# broken: held while its wakes fail, then closed at its 5 s holdTimeout.
# The holder: a connection without a PROXY header is refused at once.
for addr, data in [(("127.0.0.1", 10002), b"hi"), (("127.0.0.1", 15001), b"GET / HTTP/1.0\r\n\r\n")]:
    s = socket.create_connection(addr)
    s.sendall(data)
    s.settimeout(30)
    try:
        print(addr[1], "answered" if s.recv(10) else "closed")
    except OSError as e:
        print(addr[1], "closed:", e.strerror)
PY
  fi
  sleep 60 # both park: idleTimeout 15 s (web) and 10 s (db)
done
sleep 10
end=$(date +%s)

"$PY" scripts/render-dashboards.py --prometheus "http://127.0.0.1:$PROM_PORT" --service web \
  --end "$end" --minutes "$(((end - start) / 60 + 1))" --rate-interval 30s --out "$OUT"
