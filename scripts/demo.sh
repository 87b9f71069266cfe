#!/usr/bin/env bash
# =============================================================================
# demo.sh - replay a capture into apitap with a Prometheus scraping it, so
# Grafana (pointed at that Prometheus) shows every apitap dashboard populated.
#
# Usage:  scripts/demo.sh [CAPTURE]          (default: tests/captures/demo.pcap)
#
#   apitap      -r CAPTURE --replay-speed $SPEED --replay-loop  on 127.0.0.1:$APITAP_PORT
#   prometheus  scraping it every 5 s, with alerts/apitap-rules.yml loaded, on 127.0.0.1:$PROM_PORT
#
# Environment: SPEED (default 1: real time, the demo capture loops every ~40 s),
# APITAP_PORT (10190), PROM_PORT (9090), DEMO_SECONDS (stop after this many
# seconds; default: run until Ctrl-C), APITAP (path of the apitap binary;
# default: target/release/apitap, built if missing).
# Needs Debian's prometheus package (apt-get install -y prometheus).
# Everything listens on 127.0.0.1 only; Ctrl-C stops both processes and
# removes the temporary Prometheus data.
# =============================================================================
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CAPTURE="${1:-$ROOT/tests/captures/demo.pcap}"
SPEED="${SPEED:-1}"
APITAP_PORT="${APITAP_PORT:-10190}"
PROM_PORT="${PROM_PORT:-9090}"
DEMO_SECONDS="${DEMO_SECONDS:-}"

usage() { sed -n '2,/^# =====/p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
[[ ${1:-} == -h || ${1:-} == --help ]] && usage 0
[[ -r $CAPTURE ]] || { echo "demo.sh: cannot read capture $CAPTURE" >&2; exit 2; }

PROMETHEUS="$(command -v prometheus || true)"
[[ -n $PROMETHEUS ]] || { echo "demo.sh: prometheus not found (apt-get install -y prometheus)" >&2; exit 1; }

if [[ -z ${APITAP:-} ]]; then
  APITAP="${CARGO_TARGET_DIR:-$ROOT/target}/release/apitap"
  if [[ ! -x $APITAP ]]; then
    echo "demo.sh: building apitap (cargo build --release)" >&2
    (cd "$ROOT" && cargo build --release --quiet)
  fi
fi
[[ -x $APITAP ]] || { echo "demo.sh: no apitap binary at $APITAP" >&2; exit 1; }

WORK="$(mktemp -d /tmp/apitap-demo.XXXXXX)"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_http() {            # wait_http URL NAME PID
  for _ in $(seq 150); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { echo "demo.sh: $2 exited; its log:" >&2; cat "$WORK/$2.log" >&2; exit 1; }
    sleep 0.2
  done
  echo "demo.sh: $2 did not become ready at $1" >&2; exit 1
}

"$APITAP" -r "$CAPTURE" --replay-speed "$SPEED" --replay-loop \
  --web.listen-address "127.0.0.1:$APITAP_PORT" >"$WORK/apitap.log" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$APITAP_PORT/-/ready" apitap "$!"

cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - $ROOT/alerts/apitap-rules.yml
scrape_configs:
  - job_name: apitap
    static_configs:
      - targets: ['127.0.0.1:$APITAP_PORT']
EOF
"$PROMETHEUS" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$PROM_PORT/-/ready" prometheus "$!"

cat <<EOF
apitap      http://127.0.0.1:$APITAP_PORT/metrics   replaying $(basename "$CAPTURE") at ${SPEED}x, looping
Prometheus  http://127.0.0.1:$PROM_PORT              (alerts: http://127.0.0.1:$PROM_PORT/alerts)

Grafana: add a Prometheus data source at http://127.0.0.1:$PROM_PORT (or provision
dashboards/grafana-datasource.yaml) and import dashboards/apitap-*.json (or provision
dashboards/grafana-dashboards.yaml). With Docker, for example:
  docker run --rm --network host \\
    -v $ROOT/dashboards/grafana-datasource.yaml:/etc/grafana/provisioning/datasources/apitap.yaml:ro \\
    -v $ROOT/dashboards/grafana-dashboards.yaml:/etc/grafana/provisioning/dashboards/apitap.yaml:ro \\
    -v $ROOT/dashboards:/usr/share/apitap/dashboards:ro grafana/grafana
then open http://127.0.0.1:3000 (admin/admin), folder "apitap". Rates need about a
minute of scrapes; the alerts that fire on the demo traffic go pending, then firing.
Ctrl-C stops apitap and Prometheus.
EOF

if [[ -n $DEMO_SECONDS ]]; then
  sleep "$DEMO_SECONDS"
  n=$(curl -fsS "http://127.0.0.1:$PROM_PORT/api/v1/query" \
        --data-urlencode 'query=count(count by (cause) (apitap_api_failures_total{job="apitap"}))' |
      sed -n 's/.*"value":\[[^,]*,"\([0-9]*\)"\].*/\1/p')
  echo "demo.sh: Prometheus holds ${n:-0} failure causes from apitap"
  [[ ${n:-0} -gt 0 ]]
else
  wait "${PIDS[0]}"
fi
