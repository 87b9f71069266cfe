#!/usr/bin/env bash
# =============================================================================
# record.sh - record one HTTP/1.1 API scenario with client-side ground truth
#
#   +---- netns apitap-rec-c-PID ----+        +---- netns apitap-rec-s-PID --------+
#   | client.py (curl + raw sockets) |        | api_server.py (ThreadingHTTPServer) |
#   |   arec-cPID 10.203.0.2/24      |<======>|   arec-sPID 10.203.0.1/24 :80       |
#   +--------------------------------+  veth  | tcpdump -i arec-sPID -s 65535 'tcp' |
#                                              +------------------------------------+
#
# Usage (root):  record.sh SCENARIO OUT_DIR
#                record.sh all OUT_DIR          (every scenario, one after the other)
# Scenarios:     keepalive pipelining chunked continue statuses reset timeout mixed
#                demo  (~40 s for the dashboards; not part of "all"; also uses the
#                public address 100.128.0.1 inside the namespaces, TLS on 443
#                and a non-HTTP service on 5432)
#
# Writes OUT_DIR/SCENARIO.pcap (classic pcap, Ethernet, snaplen 65535) and
# OUT_DIR/SCENARIO.truth.json (what the clients sent and received; see README).
# MTU 1500, offloads off (wire-like frames), IPv6 off, only 10.203.0.0/24 used.
# Namespaces, veth and processes are removed on exit, also on failure.
# =============================================================================
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCENARIOS="keepalive pipelining chunked continue statuses reset timeout mixed"

usage() { sed -n '2,/^# =====/p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
[[ $# -eq 2 ]] || usage 2
SCENARIO=$1
OUT_DIR=$2

if [[ $SCENARIO == all ]]; then
  for s in $SCENARIOS; do "$0" "$s" "$OUT_DIR"; done
  exit 0
fi
[[ " $SCENARIOS demo " == *" $SCENARIO "* ]] || { echo "unknown scenario: $SCENARIO (one of: $SCENARIOS, all)" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "must run as root (netns, veth, tcpdump)" >&2; exit 1; }
for t in ip ethtool tcpdump curl python3 ss; do
  command -v "$t" >/dev/null || { echo "missing tool: $t (apt-get install -y iproute2 ethtool tcpdump curl python3)" >&2; exit 1; }
done
PY="$(python3 -c 'import sys; print(sys.executable)')"

mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PCAP="$OUT_DIR/$SCENARIO.pcap"
TRUTH="$OUT_DIR/$SCENARIO.truth.json"

NS_C="apitap-rec-c-$$"
NS_S="apitap-rec-s-$$"
IF_C="arec-c$$"          # interface names: at most 15 characters
IF_S="arec-s$$"
IP_C=10.203.0.2
IP_S=10.203.0.1
PORT=80
TT=30                    # transaction timeout the expected failures assume
[[ $SCENARIO == timeout ]] && TT=1

WORK="$(mktemp -d /tmp/apitap-rec.XXXXXX)"
PIDS=()                  # processes we started, newest last
log() { printf '[record %s %s] %s\n' "$SCENARIO" "$(date +%T)" "$*" >&2; }

stop_pid() {             # stop_pid PID SIGNAL: signal, wait up to 5 s, then KILL
  local pid=$1 sig=$2 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -s "$sig" "$pid" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -s KILL "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? i pid
  set +e
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do stop_pid "${PIDS[$i]%%:*}" "${PIDS[$i]##*:}"; done
  # anything still running inside our own namespaces was started by us
  for ns in "$NS_C" "$NS_S"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  ip link del "$IF_S" 2>/dev/null       # only if it leaked into the root namespace
  if [[ $rc -ne 0 ]]; then
    # a partial capture must not be mistaken for a good one: move it aside
    for f in "$PCAP" "$TRUTH"; do [[ -f $f ]] && mv -f "$f" "$WORK/"; done
    log "FAILED (rc=$rc); work dir kept (partial outputs inside): $WORK"
  else
    rm -rf "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ----------------------------------------------------------------- topology
log "namespaces $NS_C / $NS_S, veth $IF_C <-> $IF_S"
ip netns add "$NS_S"
ip netns add "$NS_C"
ip link add "$IF_S" mtu 1500 type veth peer name "$IF_C" mtu 1500
ip link set "$IF_S" netns "$NS_S"
ip link set "$IF_C" netns "$NS_C"
for spec in "$NS_S $IF_S $IP_S" "$NS_C $IF_C $IP_C"; do
  set -- $spec
  ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip -n "$1" addr add "$3/24" dev "$2"
  ip netns exec "$1" ethtool -K "$2" tso off gso off gro off tx off rx off >/dev/null 2>&1 \
    || log "warning: ethtool -K $2 failed (offloads may be on)"
  ip -n "$1" link set lo up
  ip -n "$1" link set "$2" up
done
if [[ $SCENARIO == demo ]]; then
  # a public unicast address for public_plaintext_endpoint; no route leaves the namespaces
  ip -n "$NS_S" addr add 100.128.0.1/32 dev "$IF_S"
  ip -n "$NS_C" route add 100.128.0.1/32 dev "$IF_C"
fi
# both ends of the veth up (carrier) before anything is started
for _ in $(seq 50); do
  ip -n "$NS_S" link show dev "$IF_S" | grep -q "state UP" &&
    ip -n "$NS_C" link show dev "$IF_C" | grep -q "state UP" && break
  sleep 0.1
done

# ----------------------------------------------------------------- server
SERVER_ARGS=(--bind "$IP_S" --port "$PORT")
if [[ $SCENARIO == demo ]]; then
  command -v openssl >/dev/null || { echo "missing tool: openssl (demo scenario)" >&2; exit 1; }
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=secure.example.com" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
  SERVER_ARGS=(--bind 0.0.0.0 --port "$PORT" --tls-port 443 --cert "$WORK/cert.pem" --key "$WORK/key.pem" --other-port 5432)
fi
ip netns exec "$NS_S" "$PY" "$HERE/api_server.py" "${SERVER_ARGS[@]}" \
  --log "$WORK/server.jsonl" >"$WORK/server.out" 2>&1 &
PIDS+=("$!:TERM")
for _ in $(seq 100); do
  ip netns exec "$NS_S" ss -Hltn "sport = :$PORT" | grep -q . && break; sleep 0.05
done
ip netns exec "$NS_S" ss -Hltn "sport = :$PORT" | grep -q . || { log "server did not start"; cat "$WORK/server.out" >&2; exit 1; }

# ----------------------------------------------------------------- capture
rm -f "$PCAP" "$TRUTH"
ip netns exec "$NS_S" tcpdump -i "$IF_S" -s 65535 -n -U -Z root -w "$PCAP" 'tcp' 2>"$WORK/tcpdump.err" &
TCPDUMP=$!
PIDS+=("$TCPDUMP:INT")
for _ in $(seq 100); do grep -qs "listening on" "$WORK/tcpdump.err" && break; sleep 0.05; done
grep -q "listening on" "$WORK/tcpdump.err" || { log "tcpdump did not start"; cat "$WORK/tcpdump.err" >&2; exit 1; }
sleep 0.5

# ----------------------------------------------------------------- traffic
log "running clients"
ip netns exec "$NS_C" "$PY" "$HERE/client.py" "$SCENARIO" --server "$IP_S" --port "$PORT" \
  --log "$WORK/client.jsonl" 2>"$WORK/client.err" &
CLIENT=$!
PIDS+=("$CLIENT:TERM")
if ! wait "$CLIENT"; then log "client failed"; cat "$WORK/client.err" >&2; exit 1; fi
[[ -s $WORK/client.err ]] && { log "client stderr:"; cat "$WORK/client.err" >&2; }

sleep 1.5                                  # last FIN/ACKs, then tcpdump flushes
kill -INT "$TCPDUMP"; wait "$TCPDUMP" || true
grep -E "packets" "$WORK/tcpdump.err" >&2 || true
dropped=$(sed -n 's/^\([0-9]*\) packets dropped by kernel.*/\1/p' "$WORK/tcpdump.err")
[[ ${dropped:-x} == 0 ]] || { log "tcpdump dropped packets (${dropped:-unknown}); not a faithful capture"; exit 1; }

# ----------------------------------------------------------------- truth
"$PY" "$HERE/truth.py" --scenario "$SCENARIO" --log "$WORK/client.jsonl" --out "$TRUTH" \
  --pcap "$PCAP" --tcpdump-stderr "$WORK/tcpdump.err" --transaction-timeout "$TT" --server "$IP_S:$PORT"
size=$(stat -c %s "$PCAP")
limit=200; [[ $SCENARIO == demo ]] && limit=500
(( size < limit * 1024 )) || log "warning: $PCAP is $size bytes (> ${limit} KB)"
log "done: $PCAP ($size bytes), $TRUTH ($("$PY" -c 'import json,sys; c=json.load(open(sys.argv[1]))["counts"]; print(c["exchanges"], "exchanges,", c["connections"], "connections")' "$TRUTH"))"
