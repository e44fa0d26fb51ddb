#!/usr/bin/env bash
# rampart web against nginx serving the same folder, and the guestbook through rampart lb.
#
#   bash bench/web/run.sh [--rounds N] [--duration S] [--only static|guestbook] [--no-build]
#
# static     1 KiB and 1 MiB files, rampart web and nginx each with ONE worker pinned to CPU 0,
#            wrk (one thread, 50 connections) pinned to CPU 1; runs alternate server by server
#            (order rotated each round); medians of requests/s, p50, p99 and the server's CPU
#            microseconds per request (utime+stime from /proc/PID/stat), and ratios to nginx.
# guestbook  PostgreSQL 15 primary + streaming replica, two rampart web guestbook nodes and
#            rampart lb in front (everything shares the two cores): wrk reads
#            (GET /api/messages?limit=10) and writes (POST /api/messages) per second.
# Results go to bench/results/web-<timestamp>.md and are printed. Loopback only; every
# process started here is killed on exit. Set RAMPART_BIN to use an already built binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=1
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
bash "$repo/scripts/deps.sh"
for c in nginx wrk taskset python3; do
  command -v "$c" >/dev/null || { echo "$c is missing" >&2; exit 1; }
done
if [ -z "${RAMPART_BIN:-}" ]; then
  target=${CARGO_TARGET_DIR:-$repo/target}
  if [ "$build" = 1 ]; then
    (cd "$repo" && cargo build --release -p rampart --bin rampart)
  fi
  export RAMPART_BIN="$target/release/rampart"
fi
[ -x "$RAMPART_BIN" ] || { echo "no rampart binary at $RAMPART_BIN" >&2; exit 1; }
exec python3 "$here/webbench.py" --repo "$repo" "${args[@]}"
