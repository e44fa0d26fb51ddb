#!/usr/bin/env bash
# Run every cargo-fuzz target in fuzz/ for SECONDS each (default 60), one after the other,
# from its seeds (fuzz/corpus/<target>, read only) and what earlier runs found
# (fuzz/work/<target>, git-ignored). Fails if any target crashes or breaks an invariant;
# prints one line per target: executions, executions per second, coverage, verdict.
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 10         # a quick pass
#   FUZZ_TARGETS="chunked topology" scripts/fuzz.sh 300
#
# Needs the nightly toolchain and cargo-fuzz (`cargo +nightly install cargo-fuzz --locked`).
# CARGO_TARGET_DIR is honoured (default fuzz/target). A crash leaves its input in
# fuzz/artifacts/<target>/; reproduce with `cargo +nightly fuzz run <target> <file>`.
set -euo pipefail

secs=${1:-60}
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/fuzz/target}
nice=${FUZZ_NICE:-10}

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo +nightly install cargo-fuzz --locked" >&2
    exit 2
fi
targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
# Debug assertions on: an integer overflow in a parser is a finding too.
nice -n "$nice" cargo +nightly fuzz build --debug-assertions

summary=()
failed=0
for t in $targets; do
    mkdir -p "work/$t" "artifacts/$t"
    log="work/$t.log"
    echo "== $t: $secs s (log: fuzz/$log)"
    if nice -n "$nice" cargo +nightly fuzz run --debug-assertions "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        verdict=ok
    else
        verdict=FAILED
        failed=1
    fi
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -n1)
    rate=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log" | tail -n1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n1 | awk '{print $2}')
    summary+=("$(printf '%-22s %10s execs %8s/s  cov %6s  %s' "$t" "${execs:-?}" \
        "${rate:-?}" "${cov:-?}" "$verdict")")
    if [ "$verdict" = FAILED ]; then
        grep -E 'panicked|ERROR: |SUMMARY|Test unit written' "$log" | head -n 8 | sed 's/^/    /' || true
    fi
done

echo
echo "fuzz summary ($secs s per target):"
printf '  %s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
    echo "FAILED: inputs in fuzz/artifacts/<target>/" >&2
    exit 1
fi
