#!/usr/bin/env bash
# Start-up time of the default stack (rampart up), cold (empty data dir) and warm (data
# kept from the previous run), with the release binary. Runs on free loopback ports in a
# temp folder and stops every process it started. Prints one line per run:
#   cold|warm  <seconds until rampart up reported "stack healthy">
# Usage: [RAMPART_BIN=path] bash bench/up/startup.sh [RUNS]   (default 3 warm runs after the cold one)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:-3}"
if [ -n "${RAMPART_BIN:-}" ]; then
  bin="$RAMPART_BIN"   # a release binary built elsewhere
else
  target="${CARGO_TARGET_DIR:-target}"
  cargo build --locked --release -p rampart --bin rampart >/dev/null
  bin="$PWD/$target/release/rampart"
  [ -x "$bin" ] || bin="$target/release/rampart"
fi
dir="$(mktemp -d /tmp/rampart-up-bench-XXXXXX)"
chmod 755 "$dir"   # PostgreSQL runs as the postgres user when this runs as root
# On failure the folder stays, with up.log and every role's log, and its path is printed.
trap 'rc=$?; if [ $rc -eq 0 ]; then rm -rf "$dir"; else echo "startup.sh failed (exit $rc): logs kept in $dir" >&2; fi' EXIT
"$bin" init "$dir/rampart.toml" --port-base 27000 >/dev/null

one() { # $1 = label
  "$bin" up --config "$dir/rampart.toml" >"$dir/up.log" 2>&1 &
  local pid=$!
  local t
  for _ in $(seq 1 1200); do
    if t=$(grep -o 'stack healthy in [0-9.]*s' "$dir/up.log" 2>/dev/null); then break; fi
    if ! kill -0 "$pid" 2>/dev/null; then echo "$1: rampart up exited:" >&2; cat "$dir/up.log" >&2; exit 1; fi
    sleep 0.1
  done
  echo "$1 ${t#stack healthy in }"
  kill -INT "$pid"
  wait "$pid" || true
}

one cold
for _ in $(seq 1 "$runs"); do one warm; done
