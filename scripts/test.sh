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
exec cargo test --locked --workspace --no-fail-fast -- "$@"
