#!/usr/bin/env bash
# Where does rampart lb spend its CPU per request? A perf profile of the bench's cpu scenario.
#
#   bash bench/lb/profile.sh [--seconds S] [--balancer rampart|haproxy|nginx|floor-MODE] [--tls] [--syscalls]
#
# --syscalls: instead of a CPU profile, count the balancer's system calls (perf's syscall
# tracepoints) and epoll events over the run and print them per request, with the host's TCP
# segments and delayed ACKs and the balancer's user and system CPU per request, to compare
# balancers on the kernel work that is most of their CPU on loopback.
# --balancer floor-tokio|floor-uring|floor-epoll: bench/io-floor, a proxy with no features.
# --tls: the tls scenario instead (the balancer terminates HTTPS with a self-signed ECDSA P-256
# certificate, HTTP/1.1 keep-alive; rampart and haproxy only). --keep: leave the work directory
# (perf.data for further `perf report -i`) in /tmp.
#
# Same set-up as bench/lb/run.sh (balancer with one worker thread on CPU 0, wrk -t1 -c50 and two
# nginx backends on CPU 1). rampart is built with line tables and frame pointers into
# "${CARGO_TARGET_DIR:-target}-prof" so the release build used by run.sh is left alone.
# RAMPART_BIN=PATH skips that build. Writes bench/results/lb-profile-<balancer>-<timestamp>.txt
# (flat and inclusive reports).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
secs=10
bal=rampart
tls=
keep=
syscalls=
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) secs=$2; shift 2 ;;
    --balancer) bal=$2; shift 2 ;;
    --tls) tls=1; shift ;;
    --keep) keep=1; shift ;;
    --syscalls) syscalls=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ "$secs" =~ ^[0-9]+$ && "$secs" -ge 3 && "$secs" -le 120 ]] || { echo "--seconds: 3..120" >&2; exit 2; }
case "$bal" in rampart|haproxy|nginx|floor-epoll|floor-tokio|floor-uring) ;;
  *) echo "--balancer: rampart, haproxy, nginx, floor-epoll, floor-tokio or floor-uring (bench/io-floor)" >&2; exit 2 ;;
esac
[ -n "$tls" ] && [ "$bal" != rampart ] && [ "$bal" != haproxy ] && { echo "--tls: rampart or haproxy" >&2; exit 2; }
scheme=http
[ -n "$tls" ] && scheme=https

bash "$repo/scripts/deps.sh"
command -v perf >/dev/null || {
  echo "perf is missing: apt-get install linux-perf" >&2
  exit 1
}
if [ "$bal" = rampart ] && [ -n "${RAMPART_BIN:-}" ]; then
  rampart_bin=$RAMPART_BIN # built elsewhere; profiles are only readable with line tables in it
elif [ "$bal" = rampart ]; then
  prof_target="${CARGO_TARGET_DIR:-$repo/target}-prof"
  echo "building rampart with debug line tables and frame pointers into $prof_target" >&2
  (cd "$repo" && CARGO_TARGET_DIR="$prof_target" CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release -p rampart --bin rampart) >&2
  rampart_bin="$prof_target/release/rampart"
elif [ "${bal#floor-}" != "$bal" ]; then
  floor_target="${CARGO_TARGET_DIR:-$repo/target}-prof/io-floor"
  (cd "$repo/bench/io-floor" && CARGO_TARGET_DIR="$floor_target" CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release -q) >&2
  floor_bin="$floor_target/release/io-floor"
fi
taskset -cp 1 $$ >/dev/null

work=$(mktemp -d /tmp/rampart-profile-lb.XXXXXX)
chmod 755 "$work"
GROUPS_ALIVE=()
cleanup() {
  local rc=$? pg
  trap - EXIT INT TERM
  for pg in "${GROUPS_ALIVE[@]}"; do
    kill -TERM -- "-$pg" 2>/dev/null || true
    sleep 0.3
    kill -KILL -- "-$pg" 2>/dev/null || true
    wait "$pg" 2>/dev/null || true
  done
  if [ $rc -ne 0 ]; then echo "failed (exit $rc); logs in $work" >&2
  elif [ -n "$keep" ]; then echo "work directory kept: $work" >&2
  else rm -rf "$work"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
start() {
  local cpu=$1 name=$2
  shift 2
  taskset -c "$cpu" setsid "$@" >"$work/$name.log" 2>&1 </dev/null &
  STARTED=$!
  GROUPS_ALIVE+=("$STARTED")
}
wait_http() {
  local i
  for i in $(seq 1 100); do
    [ "$(curl -s -k -m 1 -o /dev/null -w '%{http_code}' "$2://127.0.0.1:$1/")" = 200 ] && return 0
    sleep 0.1
  done
  echo "nothing answers 200 on port $1 (logs in $work)" >&2
  exit 1
}

read -r B1 B2 P <<<"$(python3 "$here/lbbench.py" freeport 3)"
for i in 1 2; do
  port=B$i
  mkdir -p "$work/b$i/logs"
  cat >"$work/b$i/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $work/b$i/nginx.pid;
error_log $work/b$i/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  server { listen 127.0.0.1:${!port}; location / { default_type text/plain; return 200 "hello from backend$i\n"; } } }
EOF
  start 1 "b$i" nginx -e stderr -p "$work/b$i" -c "$work/b$i/nginx.conf"
  wait_http "${!port}" http
done
if [ -n "$tls" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
  cat "$work/cert.pem" "$work/key.pem" >"$work/combined.pem"
fi
case "$bal" in
  rampart)
    if [ -n "$tls" ]; then
      cat >"$work/rampart.toml" <<EOF
[forwarded]
headers = ["x-forwarded-for"]

[[listener]]
name = "fe"
address = "127.0.0.1:$P"
pool = "be"
tls = { cert = "$work/cert.pem", key = "$work/key.pem" }

[[pool]]
name = "be"
algorithm = "round-robin"
servers = [{ address = "127.0.0.1:$B1" }, { address = "127.0.0.1:$B2" }]
health_check = { kind = "none" }
EOF
      start 0 rampart env RUST_LOG=warn "$rampart_bin" lb --config "$work/rampart.toml" --threads 1
    else
      start 0 rampart env RUST_LOG=warn "$rampart_bin" lb --listen "127.0.0.1:$P" --backend "127.0.0.1:$B1" \
        --backend "127.0.0.1:$B2" --algorithm round-robin --mode http --health-check none --threads 1 \
        --forwarded-headers x-forwarded-for
    fi
    ;;
  haproxy)
    cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8900
defaults
  mode http
  option forwardfor
  http-reuse always
  timeout connect 2s
  timeout client 120s
  timeout server 30s
frontend fe
  bind 127.0.0.1:$P${tls:+ ssl crt $work/combined.pem alpn http/1.1}
  default_backend be
backend be
  server s1 127.0.0.1:$B1
  server s2 127.0.0.1:$B2
EOF
    start 0 haproxy haproxy -f "$work/haproxy.cfg"
    ;;
  nginx)
    mkdir -p "$work/lb/logs"
    cat >"$work/lb/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $work/lb/nginx.pid;
error_log $work/lb/error.log error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  upstream be { server 127.0.0.1:$B1; server 127.0.0.1:$B2; keepalive 64; }
  server { listen 127.0.0.1:$P;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
EOF
    start 0 nginx nginx -e stderr -p "$work/lb" -c "$work/lb/nginx.conf"
    ;;
  floor-*)
    start 0 floor "$floor_bin" "${bal#floor-}" "127.0.0.1:$P" "127.0.0.1:$B1" "127.0.0.1:$B2"
    ;;
esac
pid=$STARTED
wait_http "$P" "$scheme"
taskset -c 1 wrk -t1 -c50 -d1s "$scheme://127.0.0.1:$P/" >/dev/null # warm-up

if [ -n "$syscalls" ]; then
  # TCP counters are the whole host's (wrk and nginx included): compare balancers, not absolutes.
  tcp() { awk -v k="$2" -v t="$1:" '$1 == t { if ($2 ~ /^[0-9]+$/) { for (i = 2; i <= NF; i++) v[h[i]] = $i } else { for (i = 2; i <= NF; i++) h[i] = $i } } END { print v[k] + 0 }' "/proc/net/$3"; }
  counters() { echo "$(tcp Tcp OutSegs snmp) $(tcp TcpExt DelayedACKs netstat) $(tcp TcpExt TCPPureAcks netstat) $(awk '{print $14, $15}' "/proc/$pid/stat")"; }
  perf stat -x, -e page-faults,context-switches,cpu-migrations -e 'raw_syscalls:sys_enter' -e 'syscalls:sys_enter_*' -p "$pid" -o "$work/stat.csv" &
  stat_pid=$!
  sleep 0.5
  read -r seg0 dack0 pure0 ut0 st0 <<<"$(counters)"
  taskset -c 1 wrk -t1 -c50 -d"${secs}s" "$scheme://127.0.0.1:$P/" >"$work/wrk.txt"
  read -r seg1 dack1 pure1 ut1 st1 <<<"$(counters)"
  kill -INT "$stat_pid"
  wait "$stat_pid" || true
  reqs=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  echo "# system calls of $bal${tls:+ (HTTPS)} per request under wrk -t1 -c50 ($secs s, $reqs requests)"
  awk -F, -v r="$reqs" '$1 ~ /^[0-9]+$/ && $1 > 0 { printf "%10.3f  %s\n", $1 / r, $3 }' "$work/stat.csv" |
    sed 's/syscalls:sys_enter_//; s/raw_syscalls:sys_enter/all system calls/' | sort -rn
  tck=$(getconf CLK_TCK)
  awk -v r="$reqs" -v t="$tck" -v s="$((seg1 - seg0))" -v d="$((dack1 - dack0))" -v p="$((pure1 - pure0))" \
    -v u="$((ut1 - ut0))" -v k="$((st1 - st0))" 'BEGIN {
      printf "%10.3f  TCP segments sent (whole host)\n%10.3f  delayed ACKs sent (whole host)\n%10.3f  pure ACKs received (whole host)\n", s / r, d / r, p / r
      printf "%10.2f  us user CPU of the balancer\n%10.2f  us system CPU of the balancer\n", u / t * 1e6 / r, k / t * 1e6 / r }'
  exit 0
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$repo/bench/results"
out="$repo/bench/results/lb-profile-$bal${tls:+-tls}-$stamp.txt"
taskset -c 1 wrk -t1 -c50 -d"$((secs + 2))s" --latency "$scheme://127.0.0.1:$P/" >"$work/wrk.txt" &
wrk_pid=$!
sleep 1
perf record -q -e cpu-clock -F 2999 -g -p "$pid" -o "$work/perf.data" -- sleep "$secs" 2>"$work/perf.log" || true
wait "$wrk_pid"
{
  echo "# perf profile of $bal${tls:+ (HTTPS)} under wrk -t1 -c50 ($secs s), $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "# rampart commit $(git -C "$repo" rev-parse --short HEAD)"
  grep -E "requests in|Requests/sec" "$work/wrk.txt"
  echo
  echo "## Flat profile (self time by symbol)"
  perf report -i "$work/perf.data" --stdio --no-children --sort symbol -g none --percent-limit 0.5 2>/dev/null |
    grep -v '^$'
  echo
  echo "## Self time by shared object"
  perf report -i "$work/perf.data" --stdio --no-children --sort dso -g none 2>/dev/null | grep -v '^$'
  echo
  echo "## Inclusive time (children) by symbol"
  perf report -i "$work/perf.data" --stdio --children --sort symbol -g none --percent-limit 2 2>/dev/null |
    grep -v '^$'
} >"$out"
echo "profile: $out" >&2
head -60 "$out"
