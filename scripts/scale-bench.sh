#!/usr/bin/env bash
# Does apitap's cost grow with the number of concurrent flows? (issue #8.3)
#
#   scripts/scale-bench.sh [-f FLOWS] [-l LOW] [-n RUNS] [-b BUDGET] [-w WORKERS] [-H]
#
# Writes two captures with tools/hostile (example `hostile`, deterministic):
# FLOWS connections (default 1,000,000), each a handshake, one API exchange
# and FINs, either LOW at a time (default 1,000) or all FLOWS at once
# (interleaved frame by frame). Same frames, same total bytes: only the
# number of flows open at once differs. Then times `apitap -r FILE
# --metrics-out /dev/null` on each, alternating A B A B ... (RUNS each,
# default 5), with flow.memory-budget = BUDGET (default 8 GiB, so nothing is
# evicted), and prints medians of wall and CPU (user+sys) time, MB/s, peak
# RSS and the ratio of the two. -w passes --workers WORKERS (default:
# apitap's own default, one per core). The machine is shared: compare the
# ratio, within one run. -H also runs tests/hostile.rs at full size (1 M half-open
# flows, 100,000 hosts, 1 M concurrent flows; APITAP_HOSTILE_FULL=1).
# Captures live in /var/tmp/apitap-scale (never committed).
set -euo pipefail
cd "$(dirname "$0")/.."

flows=1000000
low=1000
runs=5
budget=$((8 << 30))
hostile=0
workers=()
while getopts "f:l:n:b:w:Hh" opt; do
    case "$opt" in
    f) flows=$OPTARG ;;
    l) low=$OPTARG ;;
    n) runs=$OPTARG ;;
    b) budget=$OPTARG ;;
    w) workers=(--workers "$OPTARG") ;;
    H) hostile=1 ;;
    *) sed -n '2,21p' "$0"; exit 2 ;;
    esac
done
[ -x /usr/bin/time ] || { echo "scale-bench.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

target_dir=${CARGO_TARGET_DIR:-$(pwd)/target}
cargo build --release --quiet --bin apitap --example hostile
apitap=$target_dir/release/apitap
gen=$target_dir/release/examples/hostile

dir=/var/tmp/apitap-scale
mkdir -p "$dir"
few=$dir/concurrent-$flows-by-$low.pcap
many=$dir/concurrent-$flows-by-$flows.pcap
for spec in "$few:$low" "$many:$flows"; do
    f=${spec%%:*}
    c=${spec#*:}
    [ -s "$f" ] || "$gen" concurrent flows="$flows" concurrency="$c" exchanges=1 body=200 "$f"
done
cfg=$(mktemp)
times=$(mktemp)
trap 'rm -f "$cfg" "$times"' EXIT
printf '[flow]\nmemory-budget = %s\n' "$budget" >"$cfg"
cat "$few" "$many" >/dev/null # page cache

for i in $(seq "$runs"); do
    for spec in "low:$few" "high:$many"; do
        label=${spec%%:*}
        f=${spec#*:}
        # wall user sys maxrss_kib
        /usr/bin/time -f "$label %e %U %S %M" -a -o "$times" \
            "$apitap" --config.file "$cfg" -r "$f" --metrics-out /dev/null "${workers[@]}"
    done
    printf 'run %d: %s\n' "$i" "$(tail -n 2 "$times" | tr '\n' ' ')"
done

python3 - "$(stat -c %s "$few")" "$(stat -c %s "$many")" "$low" "$flows" "$runs" "$times" <<'PY'
import statistics, sys
size_low, size_high, low, flows, runs = (int(a) for a in sys.argv[1:6])
rows = {}
for line in open(sys.argv[6]):
    label, wall, user, sys_, rss = line.split()
    rows.setdefault(label, []).append((float(wall), float(user) + float(sys_), int(rss)))
med = lambda xs: statistics.median(xs)
print(f"{flows:,} flows, {size_low:,} vs {size_high:,} bytes; {runs} alternating runs each, medians")
print(f"{'concurrent':>12}{'wall_s':>9}{'cpu_s':>8}{'MB/s':>8}{'MB/s_cpu':>10}{'peak_MiB':>10}")
out = {}
for label, conc, size in (("low", low, size_low), ("high", flows, size_high)):
    r = rows[label]
    w, c, m = med([x[0] for x in r]), med([x[1] for x in r]), max(x[2] for x in r)
    out[label] = (size / 1e6 / w, size / 1e6 / c)
    print(f"{conc:>12,}{w:>9.3f}{c:>8.3f}{size / 1e6 / w:>8.0f}{size / 1e6 / c:>10.0f}{m / 1024:>10.0f}")
print(f"throughput ratio {flows:,} / {low:,} concurrent: wall {out['high'][0] / out['low'][0]:.2f}, "
      f"cpu {out['high'][1] / out['low'][1]:.2f} (target >= 0.80)")
PY

if [ "$hostile" = 1 ]; then
    APITAP_HOSTILE_FULL=1 cargo test --release --test hostile -- --nocapture --test-threads 1 2>&1 |
        grep -E 'peak RSS|^test |test result'
fi
