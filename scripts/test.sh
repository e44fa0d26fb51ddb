#!/usr/bin/env bash
# The README's test command: install what the tests need, build the binary, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
cargo build --locked -p rampart --bin rampart
export RAMPART_BIN="$PWD/target/debug/rampart"
status=0
cargo test --locked --workspace --no-fail-fast -- "$@" || status=$?
# The fuzz targets' seed corpus through their checks, on stable and without libFuzzer
# (fuzz/tests/corpus.rs; scripts/fuzz.sh fuzzes, on nightly). Not when tests are filtered.
if [ $# -eq 0 ]; then
  CARGO_TARGET_DIR="$PWD/target" cargo test --locked --manifest-path fuzz/Cargo.toml \
    --no-default-features --test corpus || status=$?
fi
exit "$status"
