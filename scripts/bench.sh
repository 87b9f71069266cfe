#!/usr/bin/env bash
# End-to-end throughput of `apitap -r` next to the libpcap floor.
#
#   scripts/bench.sh [-f FILE.pcap] [-n RUNS] [-s MiB]
#
# Builds apitap in release mode, makes the big capture if it is missing
# (needs root and nginx, wrk, tcpdump, ethtool, iproute2: installed with
# apt-get when absent), builds the libpcap floor (pcap_count) and times, in
# one run, alternating A B C A B C ... (RUNS each, default 5):
#   A = pcap_count FILE                      (pcap_open_offline + pcap_next_ex)
#   B = apitap -r FILE --exchanges LOG --workers 1         (one core)
#   C = apitap -r FILE --exchanges LOG --workers $(nproc)  (the default)
#   D = $(nproc) copies of B side by side, each on its own log
# then prints medians: wall and CPU (user+sys) time, the cores a run kept
# busy (CPU / wall), MB/s, packets/s, exchanges/s, time/floor and the
# speed-up of C over B. D is the machine's own ceiling for that speed-up:
# runs that share nothing, so N copies do N times B's work; what they
# achieve together (N * B / D) is what cores, caches and memory allow
# before apitap's threads share anything.
# Exchanges = lines apitap wrote to its exchange log (a real file, so the
# count is checked; the log's cost is part of apitap's time); the capture's
# request count (nginx's, from FILE.stats.txt) is shown beside it.
# The capture is never committed; it lives in /var/tmp/apitap-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

file=/var/tmp/apitap-bench/http-mix-1g.pcap
runs=5
mib=1024
while getopts "f:n:s:h" opt; do
    case "$opt" in
    f) file=$OPTARG ;;
    n) runs=$OPTARG ;;
    s) mib=$OPTARG ;;
    *) sed -n '2,18p' "$0"; exit 2 ;;
    esac
done
bench_dir=${APITAP_BENCH_DIR:-$root/../shared/bench}
[ -d "$bench_dir" ] || { echo "bench.sh: no $bench_dir (set APITAP_BENCH_DIR)" >&2; exit 1; }

need=()
for t in nginx:nginx wrk:wrk tcpdump:tcpdump ethtool:ethtool ip:iproute2 \
    gcc:gcc /usr/include/pcap/pcap.h:libpcap-dev /usr/bin/time:time capinfos:tshark; do
    cmd=${t%%:*}
    pkg=${t#*:}
    if [[ $cmd == /* ]]; then [ -e "$cmd" ] || need+=("$pkg"); else command -v "$cmd" >/dev/null || need+=("$pkg"); fi
done
if [ ${#need[@]} -gt 0 ]; then
    echo "bench.sh: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
cargo build --release --quiet --bin apitap
apitap=$target_dir/release/apitap

if [ ! -s "$file" ]; then
    echo "bench.sh: making $file (${mib} MiB, about a minute)"
    mkdir -p "$(dirname "$file")"
    "$bench_dir/make-bench-pcap.sh" -o "$file" -s "$mib"
fi

floor=${XDG_CACHE_HOME:-$HOME/.cache}/apitap-bench/pcap_count
if [[ ! -x $floor || $bench_dir/pcap_count.c -nt $floor ]]; then
    mkdir -p "$(dirname "$floor")"
    gcc -O2 -o "$floor" "$bench_dir/pcap_count.c" -lpcap
fi

size=$(stat -c %s "$file")
packets=$("$floor" "$file" | sed -n 's/^packets=\([0-9]*\).*/\1/p')
requests=$(sed -n 's/^http_requests: \([0-9]*\).*/\1/p' "$file.stats.txt" 2>/dev/null || true)
log=$(mktemp /var/tmp/apitap-bench-exchanges.XXXXXX)
trap 'rm -f "$log"*' EXIT
cat "$file" >/dev/null # warm the page cache

times=$(mktemp)
# CPU time (user + sys) of each run, beside its wall time: how many cores
# a configuration keeps busy.
cpu=$(mktemp)
trap 'rm -f "$log"* "$times" "$cpu"' EXIT
cores=$(nproc)
exchanges=0
check() {
    local n
    n=$(wc -l <"${1:-$log}")
    if [ "$exchanges" != 0 ] && [ "$n" != "$exchanges" ]; then
        echo "bench.sh: a run logged $n exchanges, the first $exchanges" >&2
    fi
    exchanges=$n
}
timed() { /usr/bin/time -a -o "$cpu" -f "$1 %U %S" "${@:2}"; }
for i in $(seq "$runs"); do
    t0=$(date +%s%N)
    timed floor "$floor" "$file" >/dev/null
    t1=$(date +%s%N)
    timed apitap-1w "$apitap" -r "$file" --exchanges "$log" --workers 1
    t2=$(date +%s%N)
    check
    timed "apitap-${cores}w" "$apitap" -r "$file" --exchanges "$log" --workers "$cores"
    t3=$(date +%s%N)
    check
    for c in $(seq "$cores"); do
        timed side-by-side "$apitap" -r "$file" --exchanges "$log.$c" --workers 1 &
    done
    wait
    t4=$(date +%s%N)
    for c in $(seq "$cores"); do check "$log.$c"; done
    echo "floor $((t1 - t0))" >>"$times"
    echo "apitap-1w $((t2 - t1))" >>"$times"
    echo "apitap-${cores}w $((t3 - t2))" >>"$times"
    echo "side-by-side $((t4 - t3))" >>"$times"
    printf 'run %d: floor %.3f s, apitap 1 worker %.3f s, %d workers %.3f s, %d x 1 worker side by side %.3f s\n' \
        "$i" "$(((t1 - t0) / 1000))e-6" "$(((t2 - t1) / 1000))e-6" "$cores" "$(((t3 - t2) / 1000))e-6" \
        "$cores" "$(((t4 - t3) / 1000))e-6"
done

python3 - "$size" "$packets" "$exchanges" "${requests:-0}" "$runs" "$times" "$cores" "$cpu" <<'PY'
import statistics, sys
size, pkts, ex, req, runs = (int(a) for a in sys.argv[1:6])
cores = int(sys.argv[7])
walls = {}
for line in open(sys.argv[6]):
    label, ns = line.split()
    walls.setdefault(label, []).append(int(ns) / 1e9)
cpus = {}
for line in open(sys.argv[8]):
    label, user, system = line.split()
    cpus.setdefault(label, []).append(float(user) + float(system))
# Side by side: one line per copy; a run's CPU is their sum.
side_by_side = cpus.get("side-by-side", [])
cpus["side-by-side"] = [sum(side_by_side[i:i + cores]) for i in range(0, len(side_by_side), cores)]
floor = statistics.median(walls["floor"])
print(f"capture: {size:,} bytes, {pkts:,} packets, {req:,} HTTP requests (nginx); "
      f"apitap logged {ex:,} exchanges; {runs} alternating runs each, medians")
print(f"{'what':<14}{'wall_s':>8}{'min_s':>8}{'max_s':>8}{'cpu_s':>7}{'cores':>6}"
      f"{'MB/s':>9}{'Mpkt/s':>9}{'exch/s':>11}{'x_floor':>9}")
many = f"apitap-{cores}w"
for label in ("floor", "apitap-1w", many, "side-by-side"):
    ws = walls[label]
    w = statistics.median(ws)
    # Side by side: N runs' bytes, packets and exchanges in that time.
    n = cores if label == "side-by-side" else 1
    rate = f"{n * ex / w:>11,.0f}" if label != "floor" else f"{'-':>11}"
    c = statistics.median(cpus[label])
    print(f"{label:<14}{w:>8.3f}{min(ws):>8.3f}{max(ws):>8.3f}{c:>7.2f}{c / w:>6.2f}"
          f"{n * size / 1e6 / w:>9.0f}"
          f"{n * pkts / 1e6 / w:>9.3f}{rate}{w / floor:>9.2f}")
one = statistics.median(walls["apitap-1w"])
print(f"one core: {floor / one:.2f} of the floor's MB/s (target >= 0.5); "
      f"{cores} workers: {one / statistics.median(walls[many]):.2f}x one worker")
side = statistics.median(walls["side-by-side"])
print(f"ceiling: {cores} one-worker runs side by side did {cores * one / side:.2f}x one run's work "
      f"per second (nothing shared; what this machine gives {cores} busy threads)")
# One worker already keeps more than one core busy (the kernel maps the
# capture's pages in on a pager thread): what is left for more workers.
busy = statistics.median(c / w for c, w in zip(cpus["apitap-1w"], walls["apitap-1w"]))
print(f"one worker keeps {busy:.2f} of {cores} cores busy: {cores} workers can be at most "
      f"{cores / busy:.2f}x as fast, with no cost of their own")
PY
