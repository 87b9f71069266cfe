#!/usr/bin/env bash
# Live capture at increasing rates: the highest rate with no drops, for
# `apitap -i` and for `tcpdump -w /dev/null` (issue #8.4).
#
#   scripts/live-rate.sh [-f FILE.pcap] [-p PACKETS] [-r "MBPS ..."] [-s SECONDS]
#
# Makes two network namespaces of its own joined by a veth pair (no
# addresses: frames are replayed raw, nothing else on the machine is
# touched), takes the first PACKETS frames of FILE (default 200,000 of
# /var/tmp/apitap-bench/http-mix-1g.pcap, about 200 MB), and for each rate
# (default "100 200 400 800 1600 topspeed", Mbit/s) replays them with
# tcpreplay into one end while, in turn, apitap and tcpdump capture on the
# other end (each with its default capture settings). Drops: apitap's
# apitap_capture_dropped_packets_total (from --metrics-out, written at
# SIGTERM) and frames it saw against TCP frames sent; tcpdump's "dropped by
# kernel" and "captured" lines; CPU: the capturing process's user + system
# time from the start of the replay until it is stopped. Prints a table
# and, per tool, the highest rate with no drop. Needs root, iproute2, tcpreplay (apt-get install -y
# tcpreplay), tcpdump, editcap. APITAP_BIN overrides the binary (default:
# a release build of this tree).
set -euo pipefail
cd "$(dirname "$0")/.."

file=/var/tmp/apitap-bench/http-mix-1g.pcap
packets=200000
rates="100 200 400 800 1600 topspeed"
settle=1
while getopts "f:p:r:s:h" opt; do
    case "$opt" in
    f) file=$OPTARG ;;
    p) packets=$OPTARG ;;
    r) rates=$OPTARG ;;
    s) settle=$OPTARG ;;
    *) sed -n '2,21p' "$0"; exit 2 ;;
    esac
done
for t in ip tcpreplay tcpdump editcap; do
    command -v "$t" >/dev/null || { echo "live-rate.sh: needs $t" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "live-rate.sh: needs root (network namespaces)" >&2; exit 1; }
[ -s "$file" ] || { echo "live-rate.sh: no $file (scripts/bench.sh makes it)" >&2; exit 1; }

if [ -z "${APITAP_BIN:-}" ]; then
    cargo build --release --quiet --bin apitap
    APITAP_BIN=${CARGO_TARGET_DIR:-$(pwd)/target}/release/apitap
fi

id=$$
tx=lrt$id rx=lrr$id
ns_tx=apitap-lr$id-tx ns_rx=apitap-lr$id-rx
work=$(mktemp -d /var/tmp/apitap-live-rate.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    ip netns del "$ns_tx" 2>/dev/null || true
    ip netns del "$ns_rx" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns_tx"
ip netns add "$ns_rx"
ip link add "$tx" type veth peer name "$rx"
ip link set "$tx" netns "$ns_tx"
ip link set "$rx" netns "$ns_rx"
# No IPv6 (router solicitations would be frames nobody sent on purpose).
for ns in "$ns_tx" "$ns_rx"; do
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
ip -n "$ns_tx" link set "$tx" up
ip -n "$ns_rx" link set "$rx" up
# Large frames in the capture (offloads off when it was made: <= 1514).
ip -n "$ns_tx" link set "$tx" mtu 1500
ip -n "$ns_rx" link set "$rx" mtu 1500

slice=$work/slice.pcap
editcap -r "$file" "$slice" "1-$packets" 2>/dev/null
sent_bytes=$(stat -c %s "$slice")
# apitap's default filter is `tcp`: the slice's ARP frames are not for it.
not_tcp=$(tcpdump -nn -r "$slice" 'not tcp' 2>/dev/null | wc -l)
echo "slice: $packets frames ($not_tcp not TCP), $((sent_bytes / 1000000)) MB of $file"

results=$work/results
: >"$results"
for rate in $rates; do
    for tool in apitap tcpdump; do
        out=$work/$tool.out
        err=$work/$tool.err
        if [ "$tool" = apitap ]; then
            ip netns exec "$ns_rx" "$APITAP_BIN" -i "$rx" --metrics-out "$work/metrics.prom" \
                >"$out" 2>"$err" &
        else
            ip netns exec "$ns_rx" tcpdump -i "$rx" -w /dev/null >"$out" 2>"$err" &
        fi
        pid=$!
        sleep "$settle" # the capture is open and the kernel buffer set
        # `ip netns exec` execs the tool: $pid is the capturing process.
        cpu0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        if [ "$rate" = topspeed ]; then speed=(--topspeed); else speed=(--mbps "$rate"); fi
        replay=$(ip netns exec "$ns_tx" tcpreplay -i "$tx" "${speed[@]}" "$slice" 2>&1)
        sleep "$settle"
        cpu1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b - a) / hz}')
        kill -TERM "$pid"
        wait "$pid" || true
        pid=
        sent=$(sed -n 's/.*Successful packets: *\([0-9]*\).*/\1/p' <<<"$replay")
        achieved=$(sed -n 's/.*Rated: *[0-9.]* Bps, *\([0-9.]*\) Mbps.*/\1/p' <<<"$replay" | head -n 1)
        if [ "$tool" = apitap ]; then
            dropped=$(awk '/^apitap_capture_dropped_packets_total/ {s += $2} END {print s + 0}' "$work/metrics.prom")
            seen=$(awk '/^apitap_capture_packets_total/ {s += $2} END {print s + 0}' "$work/metrics.prom")
        else
            dropped=$(sed -n 's/^\([0-9]*\) packets* dropped by kernel.*/\1/p' "$err")
            seen=$(sed -n 's/^\([0-9]*\) packets* captured.*/\1/p' "$err")
        fi
        expected=${sent:-0}
        [ "$tool" = apitap ] && expected=$((expected - not_tcp))
        missing=$((expected - ${seen:-0}))
        [ "$missing" -lt 0 ] && missing=0
        printf '%-8s %-9s achieved %8s Mbit/s  sent %8s  seen %8s  dropped %6s  missing %6s  cpu %5s s\n' \
            "$tool" "$rate" "${achieved:-?}" "${sent:-?}" "${seen:-?}" "${dropped:-?}" "$missing" "$cpu"
        echo "$tool $rate ${achieved:-0} ${dropped:-0} $missing" >>"$results"
    done
done

echo
for tool in apitap tcpdump; do
    best=$(awk -v t="$tool" '$1 == t && $4 == 0 && $5 == 0 && $3 + 0 > b {b = $3 + 0; r = $2} END {if (b) print r " (" b " Mbit/s achieved)"; else print "none"}' "$results")
    echo "$tool: highest rate without drops: $best"
done
