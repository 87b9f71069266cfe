#!/usr/bin/env bash
# Fuzz smoke test: every fuzz target for SECONDS (default 30) each.
#
#   scripts/fuzz-smoke.sh [SECONDS] [TARGET...]
#
# Installs cargo-fuzz if missing, writes seed corpora from the project's
# captures (tests/captures, samples) and, when present, the shared corpus
# (../shared/corpus or $APITAP_CORPUS) into fuzz/corpus/<target>/ (gitignored),
# then runs each target. Exits non-zero if any target crashed or broke an
# invariant; the artifact path (fuzz/artifacts/<target>/crash-*) is printed,
# and `cargo fuzz run <target> <artifact>` replays it.
#
# Only a stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it take the
# -Z flags cargo-fuzz passes. FUZZ_SANITIZER=none (default: address) skips
# AddressSanitizer, which apitap's safe code gains little from, for speed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(decode reassembly http_request http_response flow classify tls capture)
fi
sanitizer=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

# Seeds: the project's own captures, plus the shared corpus when it is there.
captures=("$root"/tests/captures/*.pcap "$root"/samples/*.pcap)
corpus_dir=${APITAP_CORPUS:-$root/../shared/corpus}
if [ -d "$corpus_dir" ]; then
    shopt -s nullglob
    captures+=("$corpus_dir"/*.pcap "$corpus_dir"/*.pcapng)
    shopt -u nullglob
fi
(
    cd fuzz
    # Its own target dir (fuzz/target): the fuzz build uses other flags.
    cargo build --quiet --release --example seeds
    ./target/release/examples/seeds corpus "${captures[@]}"
    # Past findings (fuzz/regressions/<target>-<name>.bin) run first, as
    # part of each target's corpus.
    for f in regressions/*.bin; do
        [ -e "$f" ] || continue
        t=$(basename "$f")
        mkdir -p "corpus/${t%%-*}"
        cp "$f" "corpus/${t%%-*}/"
    done
)

failed=()
for t in "${targets[@]}"; do
    echo "fuzz-smoke: $t for ${seconds}s"
    log=$(mktemp)
    status=0
    (cd fuzz && cargo fuzz run -O --sanitizer "$sanitizer" "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -max_len=131072 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1) >"$log" 2>&1 || status=$?
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+ +DONE' "$log" || true
    if [ "$status" -ne 0 ]; then
        echo "fuzz-smoke: $t FAILED (exit $status)"
        grep -E -A3 'panicked at|ERROR: (libFuzzer|AddressSanitizer)' "$log" | head -20 || true
        grep -E 'Test unit written to|artifact_prefix' "$log" || true
        tail -5 "$log"
        failed+=("$t")
    fi
    rm -f "$log"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz-smoke: FAILED: ${failed[*]}"
    echo "fuzz-smoke: ${#targets[@]} targets, $(( ${#targets[@]} - ${#failed[@]} )) passed, ${#failed[@]} failed"
    exit 1
fi
echo "fuzz-smoke: ${#targets[@]} passed, 0 failed"
