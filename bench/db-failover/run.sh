#!/usr/bin/env bash
# Failover benchmark of issue 4: rampart db against Patroni 3 (Debian's patroni 3.0.2) with etcd,
# same lease settings, same machine, side by side.
#   bash bench/db-failover/run.sh [--trials N] [--system rampart|patroni|both] [--sync] [--settings a,b] [--keep]
# Results: a table on stdout and bench/results/db-failover-<ts>.md. Needs root.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

# Install what is missing (idempotent): the project's packages, then the anchor and the writer's driver.
bash "$root/scripts/deps.sh"
missing=()
for p in patroni python3-psycopg2 postgresql-15 etcd-server; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "db-failover: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  service patroni stop >/dev/null 2>&1 || true
fi

want_rampart=1
for a in "$@"; do
  case "$a" in patroni) want_rampart=0 ;; esac
done
if [ "$want_rampart" = 1 ] && [ -z "${RAMPART_BIN:-}" ]; then
  # Failover timing is not CPU-bound, but build release like every other bench.
  (cd "$root" && cargo build --release -p rampart >&2)
  export RAMPART_BIN="${CARGO_TARGET_DIR:-$root/target}/release/rampart"
fi

# Debian's python (psycopg2 and patroni live there), not whatever python3 is first on PATH.
exec /usr/bin/python3 -B "$here/failover.py" "$@"
