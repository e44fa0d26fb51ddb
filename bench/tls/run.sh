#!/usr/bin/env bash
# TLS handshakes: rampart lb against HAProxy, one worker thread each.
#
#   bash bench/tls/run.sh [--rounds N] [--secs S] [--procs P] [--versions 1.3,1.2] [--no-build]
#
# Each balancer runs ONE worker thread pinned to CPU 0 with the same self-signed ECDSA P-256
# certificate; the client (bench/tls/tlsbench.py: Python's ssl module, i.e. OpenSSL, P
# processes) runs on CPU 1. Scenarios, per TLS version: `full` (new session per connection)
# and `resumed` (every connection offers the session of a first one). Rounds alternate the
# balancers. The balancer's CPU (utime+stime of its processes) per completed handshake is
# the result; medians and ratios to HAProxy go to bench/results/tls-<timestamp>.md.
# Everything listens on loopback; every process started here is killed on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
py() { python3 "$here/tlsbench.py" "$@"; }

rounds=5
secs=4
procs=3
versions="1.3,1.2"
build=1
cmdline="bash bench/tls/run.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --secs) secs=$2; shift 2 ;;
    --procs) procs=$2; shift 2 ;;
    --versions) versions=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$rounds" =~ ^[0-9]+$ && "$rounds" -ge 1 && "$rounds" -le 50 ]] || { echo "--rounds: 1..50" >&2; exit 2; }
[[ "$secs" =~ ^[0-9]+$ && "$secs" -ge 1 && "$secs" -le 60 ]] || { echo "--secs: 1..60" >&2; exit 2; }
[[ "$procs" =~ ^[0-9]+$ && "$procs" -ge 1 && "$procs" -le 16 ]] || { echo "--procs: 1..16" >&2; exit 2; }

log() { echo "[bench-tls $(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }

bash "$repo/scripts/deps.sh"
for c in haproxy openssl taskset setsid curl python3; do
  command -v "$c" >/dev/null || die "$c is missing"
done
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (balancer on CPU 0, client on CPU 1)"
hz=$(getconf CLK_TCK)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
rampart_bin=${RAMPART_BIN:-$target_dir/release/rampart}
if [ "$build" = 1 ]; then
  log "building rampart (release)"
  (cd "$repo" && CARGO_TARGET_DIR="$target_dir" cargo build --release -p rampart --bin rampart) >&2
fi
[ -x "$rampart_bin" ] || die "$rampart_bin is missing (build it or drop --no-build)"

taskset -cp 1 $$ >/dev/null
work=$(mktemp -d /tmp/rampart-bench-tls.XXXXXX)
GROUPS_ALIVE=()
cleanup() {
  local rc=$? pg
  trap - EXIT INT TERM
  for pg in "${GROUPS_ALIVE[@]}"; do
    kill -TERM -- "-$pg" 2>/dev/null || true
  done
  sleep 0.3
  for pg in "${GROUPS_ALIVE[@]}"; do
    kill -KILL -- "-$pg" 2>/dev/null || true
  done
  if [ $rc -eq 0 ]; then rm -rf "$work"; else log "failed (exit $rc); logs kept in $work"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # start NAME cmd... ; STARTED = pid (= process group)
  local name=$1
  shift
  taskset -c 0 setsid "$@" >"$work/$name.log" 2>&1 </dev/null &
  STARTED=$!
  GROUPS_ALIVE+=("$STARTED")
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_tls() { # until a TLS handshake completes on PORT (at most 10 s)
  local port=$1 i
  for i in $(seq 1 100); do
    if timeout 2 openssl s_client -connect "127.0.0.1:$port" </dev/null 2>/dev/null | grep -q '^New, TLS'; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null || die "openssl could not make a certificate"
cat "$work/cert.pem" "$work/key.pem" >"$work/combined.pem"
# A backend that refuses: the one request that fetches a session gets a 502/503 (its answer
# does not matter; the handshakes measured carry no request).
backend="127.0.0.1:9"

hp=$(free_port)
cat >"$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:$hp ssl crt $work/combined.pem alpn h2,http/1.1
  default_backend be
backend be
  retries 0
  server s1 $backend
CONF
haproxy -c -q -f "$work/haproxy.cfg" >/dev/null || die "haproxy rejects its config"
start haproxy haproxy -W -f "$work/haproxy.cfg"
hpid=$STARTED
wait_tls "$hp" || die "haproxy did not start (see $work/haproxy.log)"

rp=$(free_port)
cat >"$work/rampart.toml" <<CONF
[[listener]]
name = "fe"
address = "127.0.0.1:$rp"
pool = "be"
tls = { cert = "$work/cert.pem", key = "$work/key.pem" }

[[pool]]
name = "be"
servers = [{ address = "$backend" }]
health_check = { kind = "none" }
CONF
start rampart env RUST_LOG=warn "$rampart_bin" lb --config "$work/rampart.toml" --threads 1
rpid=$STARTED
wait_tls "$rp" || die "rampart did not start (see $work/rampart.log)"

printf 'balancer\tversion\tmode\tround\thandshakes\treused_frac\terrors\trate\tcpu_us\n' >"$work/rows.tsv"
IFS=, read -r -a vers <<<"$versions"
for r in $(seq 1 "$rounds"); do
  for v in "${vers[@]}"; do
    for mode in full resumed; do
      if [ $((r % 2)) = 1 ]; then order="haproxy rampart"; else order="rampart haproxy"; fi
      for b in $order; do
        if [ "$b" = haproxy ]; then port=$hp; pid=$hpid; else port=$rp; pid=$rpid; fi
        t0=$(py ticks "$pid")
        res=$(py load "$port" "$mode" "$secs" "$procs" "$v")
        t1=$(py ticks "$pid")
        row=$(python3 - "$res" "$t0" "$t1" "$hz" <<'PY'
import json, sys
j = json.loads(sys.argv[1]); t0, t1, hz = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
n = max(j["handshakes"], 1)
print(f"{j['handshakes']}\t{j['reused'] / n:.3f}\t{j['errors']}\t{j['handshakes'] / j['secs']:.1f}\t{(t1 - t0) * 1e6 / hz / n:.1f}")
PY
)
        printf '%s\t%s\t%s\t%s\t%s\n' "$b" "$v" "$mode" "$r" "$row" >>"$work/rows.tsv"
        log "round $r TLS $v $mode $b: $row"
      done
    done
  done
done

ts=$(date -u +%Y%m%dT%H%M%SZ)
python3 - "$work/meta.json" "$cmdline" "$rounds" "$secs" "$procs" "$(cd "$repo" && git rev-parse --short HEAD)" <<'PY'
import json, os, platform, subprocess, sys, time
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
hv = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
ov = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cmd": sys.argv[2],
           "rounds": sys.argv[3], "secs": sys.argv[4], "procs": sys.argv[5], "rev": sys.argv[6],
           "cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
           "haproxy": hv, "openssl": ov}, open(sys.argv[1], "w"))
PY
mkdir -p "$repo/bench/results"
py report "$work" | tee "$repo/bench/results/tls-$ts.md"
log "report: bench/results/tls-$ts.md"
