#!/usr/bin/env bash
# The README's first command: install what the stack needs (only when missing), build
# rampart in release mode, and run the whole default stack on this machine with
# `rampart up` (two load balancers, three web servers, PostgreSQL primary + two
# replicas, three etcd members, the monitor and its dashboard). Ctrl-C stops everything; the data is kept for the
# next start (pass --fresh to start over). Extra arguments go to `rampart up`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
cargo build --locked --release -p rampart --bin rampart
exec "${CARGO_TARGET_DIR:-target}/release/rampart" up "$@"
