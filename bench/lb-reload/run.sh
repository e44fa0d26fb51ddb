#!/usr/bin/env bash
# Reload under load: HAProxy (master-worker, -W, listening sockets passed to the new worker
# with `expose-fd listeners` / -x, reload by SIGUSR2 to the master) against rampart lb
# (SIGHUP, applied in place), side by side in alternating rounds.
#
# usage: bench/lb-reload/run.sh [--reloads N] [--seconds S] [--rounds R] [--port-base P]
#
# Each round starts one balancer in front of two nginx backends, drives it with two wrk
# clients at once (keep-alive connections, and a new connection per request, so refused
# connections show up as connect errors), and reloads it N times during S seconds, every
# other reload changing a server's weight in the config. It reports the client-side errors
# (connect/read/write/timeout and non-2xx) per balancer and per reload.
# RAMPART_BIN: the rampart binary (default: $CARGO_TARGET_DIR or target, release then debug).
set -euo pipefail

reloads=20 seconds=10 rounds=2 base=$((27000 + RANDOM % 2000 * 2))
while [ $# -gt 0 ]; do
  case "$1" in
    --reloads) reloads=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --port-base) base=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
die() { echo "lb-reload: $*" >&2; exit 1; }
for c in haproxy nginx wrk; do command -v "$c" >/dev/null || die "$c is missing (scripts/deps.sh installs it)"; done
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bin=${RAMPART_BIN:-}
if [ -z "$bin" ]; then
  for c in "$target/release/rampart" "$target/debug/rampart"; do [ -x "$c" ] && { bin=$c; break; }; done
fi
[ -n "$bin" ] && [ -x "$bin" ] || die "no rampart binary: cargo build --release -p rampart, or set RAMPART_BIN"

work=$(mktemp -d /tmp/rampart-lb-reload.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
start() { local name=$1; shift; setsid "$@" >"$work/$name.log" 2>&1 & pids+=($!); }

lb=$base admin=$((base + 9)) b1=$((base + 1)) b2=$((base + 2))
for i in 1 2; do
  d="$work/backend$i"; mkdir -p "$d/logs"
  port=$((base + i))
  cat >"$d/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log stderr error; pid $d/nginx.pid;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$port; location / { return 200 "backend$i\n"; } } }
CONF
  start "backend$i" nginx -e stderr -p "$d" -c "$d/nginx.conf"
done
sleep 0.5

haproxy_cfg() { # WEIGHT_B
  cat >"$work/haproxy.cfg" <<CONF
global
  maxconn 4000
  stats socket $work/haproxy.sock mode 600 level admin expose-fd listeners
  nbthread 1
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend web
  bind 127.0.0.1:$lb
  default_backend app
backend app
  balance roundrobin
  server a 127.0.0.1:$b1 weight 1
  server b 127.0.0.1:$b2 weight $1
CONF
}
rampart_cfg() { # WEIGHT_B
  cat >"$work/rampart.toml" <<CONF
[[listener]]
name = "web"
address = "127.0.0.1:$lb"
pool = "app"
[[pool]]
name = "app"
servers = [{ name = "a", address = "127.0.0.1:$b1" }, { name = "b", address = "127.0.0.1:$b2", weight = $1 }]
CONF
}

# run_round BALANCER -> prints "requests errors" into $work/result
run_round() {
  local b=$1 pid
  case "$b" in
    haproxy)
      haproxy_cfg 1
      start haproxy haproxy -W -f "$work/haproxy.cfg" -p "$work/haproxy.pid"
      ;;
    rampart)
      rampart_cfg 1
      start rampart "$bin" lb --config "$work/rampart.toml" --threads 1 --pid-file "$work/rampart.pid"
      ;;
  esac
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$lb/" && break; sleep 0.05; done
  sleep 0.3
  wrk -t1 -c20 -d"${seconds}s" --latency "http://127.0.0.1:$lb/" >"$work/wrk-ka.txt" 2>&1 &
  local w1=$!
  wrk -t1 -c10 -d"${seconds}s" -H "Connection: close" "http://127.0.0.1:$lb/" >"$work/wrk-close.txt" 2>&1 &
  local w2=$!
  local gap
  gap=$(awk -v s="$seconds" -v n="$reloads" 'BEGIN { printf "%.3f", (s - 1) / n }')
  sleep 0.5
  for i in $(seq "$reloads"); do
    sleep "$gap"
    case "$b" in
      haproxy) haproxy_cfg $((1 + i % 2)); pid=$(cat "$work/haproxy.pid"); kill -USR2 "$pid" ;;
      rampart) rampart_cfg $((1 + i % 2)); pid=$(cat "$work/rampart.pid"); kill -HUP "$pid" ;;
    esac
  done
  wait $w1 $w2 || true
  local req=0 err=0 f
  for f in "$work/wrk-ka.txt" "$work/wrk-close.txt"; do
    req=$((req + $(awk '/requests in/ { print $1 }' "$f")))
    err=$((err + $(awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 } /Non-2xx/ { print $NF }' "$f" | awk '{ s += $1 } END { print s + 0 }')))
  done
  echo "$req $err $(grep -h 'Socket errors' "$work/wrk-ka.txt" "$work/wrk-close.txt" | tr '\n' ';')" >"$work/result"
  # Stop it (the whole process group: an HAProxy master and its workers).
  local last=${pids[-1]}
  kill -TERM -- "-$last" 2>/dev/null || true
  sleep 1
  kill -KILL -- "-$last" 2>/dev/null || true
  unset 'pids[-1]'
  sleep 0.5
}

declare -A req err
for b in haproxy rampart; do req[$b]=0; err[$b]=0; done
echo "other load (1-min loadavg) before: $(cut -d' ' -f1 /proc/loadavg)"
for r in $(seq "$rounds"); do
  for b in haproxy rampart; do
    run_round "$b"
    read -r q e detail <"$work/result"
    echo "round $r $b: $q requests, $e errors over $reloads reloads ${detail:+($detail)}"
    req[$b]=$((${req[$b]} + q)); err[$b]=$((${err[$b]} + e))
  done
done
echo "other load (1-min loadavg) after: $(cut -d' ' -f1 /proc/loadavg)"
echo
echo "| balancer | reloads | requests | failed requests | failed per reload |"
echo "|---|---|---|---|---|"
for b in haproxy rampart; do
  n=$((reloads * rounds))
  echo "| $b $( [ "$b" = haproxy ] && haproxy -v | head -1 | awk '{print $3}') | $n | ${req[$b]} | ${err[$b]} | $(awk -v e="${err[$b]}" -v n="$n" 'BEGIN { printf "%.2f", e / n }') |"
done
