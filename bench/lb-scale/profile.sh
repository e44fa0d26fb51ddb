#!/usr/bin/env bash
# Where rampart lb's cost per request goes as the pool grows: one balancer, one pool size, one
# algorithm, counted rather than timed (the machine may be busy).
#
#   bash bench/lb-scale/profile.sh --servers 1000 --algorithm round-robin
#        [--bin target/release/rampart] [--duration 5] [--warm 5] [--callgrind]
#        [--balancer rampart|haproxy]
#
# Setup as bench/lb-scale/run.sh: the balancer (one worker thread) on CPU 0, wrk (1 thread, 64
# connections) and two nginx on CPU 1, server i at 127.0.x.y (even ones nginx 1, odd nginx 2),
# health checks off. After a warm-up (every server gets requests, so every one holds an upstream
# connection) one window of `duration` seconds is measured, printed as one line:
#   requests; the balancer's utime and stime per request; its syscalls per request (perf stat
#   tracepoints, when perf works); the TCP segments and delayed ACKs (timer-sent) per request
#   (/proc/net/snmp and netstat, system-wide); its open files after the window.
# --balancer haproxy: HAProxy (one thread) in the balancer's place, configured as in
#   bench/lb-scale/run.sh (random(2) for both random-two-choices and least-response-time), to
#   compare the kernel's side (segments, delayed ACKs, open files) of the same traffic.
# --callgrind: the balancer runs under callgrind with a cache simulation (D1 32 KiB, and an
#   LL of 512 KiB standing for the per-core L2), collecting only inside the client
#   connections' tasks (`rampart_lb::http::spawn` and `rampart_lb::h1::serve`: the request path, not the per-second sweeps
#   of the idle connections, whose share per request would depend on how fast valgrind runs)
#   and only during the window; adds instructions, D1 and LL misses per request. The profile is
#   kept (its path is printed) for callgrind_annotate.
# Loopback only; every process started here is killed on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=$repo/target/release/rampart
n=
algo=
duration=5
warm=5
cg=0
bal=rampart
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --servers) n=$2; shift 2 ;;
    --algorithm) algo=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --warm) warm=$2; shift 2 ;;
    --callgrind) cg=1; shift ;;
    --balancer) bal=$2; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$n" =~ ^[0-9]+$ && "$n" -ge 1 && "$n" -le 10000 ]] || { echo "--servers: 1..10000" >&2; exit 2; }
[ -n "$algo" ] || { echo "--algorithm is needed (round-robin, least-connections, ...)" >&2; exit 2; }
case "$bal" in rampart) [ -x "$bin" ] || { echo "no rampart binary at $bin" >&2; exit 2; } ;;
  haproxy) command -v haproxy >/dev/null || { echo "haproxy is missing" >&2; exit 1; }
    [ $cg = 0 ] || { echo "--callgrind counts rampart only" >&2; exit 2; } ;;
  *) echo "--balancer: rampart or haproxy" >&2; exit 2 ;;
esac
for c in nginx wrk taskset setsid curl python3; do command -v "$c" >/dev/null || { echo "$c is missing" >&2; exit 1; }; done
[ $cg = 0 ] || command -v valgrind >/dev/null || { echo "valgrind is missing" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
lbpy() { python3 "$repo/bench/lb/lbbench.py" "$@"; }
work=$(mktemp -d /tmp/rampart-lb-profile.XXXXXX)
GROUPS_ALIVE=()
cleanup() {
  local rc=$? pg
  trap - EXIT INT TERM
  for pg in "${GROUPS_ALIVE[@]}"; do
    kill -TERM -- "-$pg" 2>/dev/null || true
    sleep 0.3
    kill -KILL -- "-$pg" 2>/dev/null || true
  done
  [ $cg = 1 ] || rm -rf "$work"
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
addr() { echo "127.0.$((1 + $1 / 250)).$((1 + $1 % 250))"; }
read -r B1 B2 PORT <<<"$(lbpy freeport 3)"
for b in 1 2; do
  dir=$work/backend$b
  mkdir -p "$dir"
  port=$B1
  [ $b = 2 ] && port=$B2
  {
    echo "daemon off; master_process off; worker_processes 1; worker_rlimit_nofile $((n + 4000));"
    echo "pid $dir/nginx.pid; error_log $dir/error.log warn;"
    echo "events { worker_connections $((n + 2000)); }"
    echo "http { access_log off; keepalive_requests 10000000; keepalive_timeout 600s; client_body_temp_path $dir/tmp;"
    echo "  server {"
    for ((i = b - 1; i < n; i += 2)); do echo "    listen $(addr $i):$port backlog=1024;"; done
    echo "    location / { default_type text/plain; return 200 \"hello from backend$b\\n\"; }"
    echo "  }"
    echo "}"
  } >"$dir/nginx.conf"
  start 1 "backend$b" nginx -e stderr -p "$dir" -c "$dir/nginx.conf"
done
{
  echo "[forwarded]"
  echo "headers = [\"x-forwarded-for\"]" # what the lb-scale bench gives both balancers
  echo
  echo "[[listener]]"
  echo "name = \"fe\""
  echo "address = \"127.0.0.1:$PORT\""
  echo "pool = \"be\""
  echo
  echo "[[pool]]"
  echo "name = \"be\""
  echo "algorithm = \"$algo\""
  echo "health_check = { kind = \"none\" }"
  echo "servers = ["
  for ((i = 0; i < n; i++)); do
    p=$B1
    [ $((i % 2)) = 1 ] && p=$B2
    echo "  { name = \"s$i\", address = \"$(addr $i):$p\" },"
  done
  echo "]"
} >"$work/lb.toml"
wrap=()
if [ $cg = 1 ]; then
  wrap=(valgrind --tool=callgrind --cache-sim=yes --D1=32768,8,64 --LL=524288,8,64
    --instr-atstart=no "--toggle-collect=*rampart_lb::http::spawn::*" "--toggle-collect=*rampart_lb::h1::serve::*"
    "--callgrind-out-file=$work/callgrind.out")
fi
if [ "$bal" = haproxy ]; then
  case "$algo" in round-robin) hb=roundrobin ;; least-connections) hb=leastconn ;;
    source-ip-hash) hb=$'source\n  hash-type consistent' ;; random-two-choices|least-response-time) hb='random(2)' ;;
    *) echo "no HAProxy algorithm for $algo" >&2; exit 2 ;;
  esac
  {
    printf 'global\n  nbthread 1\n  ulimit-n %d\n  maxconn 4000\n' $((2 * n + 4000))
    printf 'defaults\n  mode http\n  option http-keep-alive\n  option forwardfor\n  http-reuse always\n'
    printf '  timeout connect 2s\n  timeout client 120s\n  timeout server 30s\n  timeout http-request 10s\n  timeout http-keep-alive 120s\n'
    printf 'frontend fe\n  bind 127.0.0.1:%s\n  maxconn 4000\n  default_backend be\n' "$PORT"
    printf 'backend be\n  balance %s\n  default-server pool-purge-delay 300s\n' "$hb"
    for ((i = 0; i < n; i++)); do
      p=$B1
      [ $((i % 2)) = 1 ] && p=$B2
      echo "  server s$i $(addr $i):$p"
    done
  } >"$work/haproxy.cfg"
  haproxy -c -q -f "$work/haproxy.cfg" >/dev/null || { echo "haproxy rejects $work/haproxy.cfg" >&2; exit 1; }
  start 0 lb haproxy -db -f "$work/haproxy.cfg"
else
  start 0 lb env RUST_LOG=warn "${wrap[@]}" "$bin" lb --config "$work/lb.toml" --threads 1
fi
lb=$STARTED
ok=0
for _ in $(seq 1 600); do
  [ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/")" = 200 ] && { ok=1; break; }
  sleep 0.1
done
[ $ok = 1 ] || { echo "the balancer did not answer (see $work/lb.log)" >&2; exit 1; }
taskset -c 1 wrk -t1 -c64 -d"${warm}s" "http://127.0.0.1:$PORT/" >/dev/null
sleep 0.5
snmp() { awk -v k="$1" '/^Tcp:/ { if ($2 ~ /^[0-9]+$/) { for (i = 2; i <= NF; i++) v[h[i]] = $i } else { for (i = 2; i <= NF; i++) h[i] = $i } } END { print v[k] }' /proc/net/snmp; }
read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$lb/stat")
o0=$(snmp OutSegs)
dack() { awk '/^TcpExt:/ { if ($2 ~ /^[0-9]+$/) { for (i = 2; i <= NF; i++) v[h[i]] = $i } else { for (i = 2; i <= NF; i++) h[i] = $i } } END { print v["DelayedACKs"] }' /proc/net/netstat; }
k0=$(dack)
[ $cg = 0 ] || callgrind_control -i on "$lb" >/dev/null 2>&1
perf_pid=
if perf stat -e syscalls:sys_enter_sendto true >/dev/null 2>&1; then
  ev=syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_connect,syscalls:sys_enter_close
  perf stat -x, -e "$ev" -o "$work/perf.txt" -p "$lb" -- sleep "$duration" >/dev/null 2>&1 &
  perf_pid=$!
fi
taskset -c 1 wrk -t1 -c64 -d"${duration}s" "http://127.0.0.1:$PORT/" >"$work/wrk.txt"
if [ $cg = 1 ]; then
  callgrind_control -i off "$lb" >/dev/null 2>&1
  callgrind_control --dump=window "$lb" >/dev/null 2>&1
fi
[ -z "$perf_pid" ] || wait "$perf_pid" || true
o1=$(snmp OutSegs)
k1=$(dack)
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$lb/stat")
fds=$(ls "/proc/$lb/fd" | wc -l)
req=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
prof=
[ $cg = 0 ] || prof=$(ls "$work"/callgrind.out.* | tail -1)
python3 - "$n" "$algo" "$req" "$duration" "$u0" "$u1" "$s0" "$s1" "$o0" "$o1" "$k0" "$k1" "$fds" "$(getconf CLK_TCK)" "$work/perf.txt" "$prof" <<'P'
import os, sys
n, algo, req, d, u0, u1, s0, s1, o0, o1, k0, k1, fds, tck, perf, prof = sys.argv[1:]
req = int(req); tck = int(tck)
us = lambda a, b: (int(b) - int(a)) / tck * 1e6 / req
out = [f"servers={n}", f"algorithm={algo}", f"requests={req}",
       f"user_us/req={us(u0, u1):.2f}", f"sys_us/req={us(s0, s1):.2f}",
       f"tcp_segments/req={(int(o1) - int(o0)) / req:.2f}",
       f"delayed_acks/req={(int(k1) - int(k0)) / req:.3f}", f"lb_fds={fds}"]
if os.path.exists(perf):
    for line in open(perf):
        f = line.strip().split(",")
        if len(f) > 2 and f[2].startswith("syscalls:") and f[0].isdigit():
            out.append(f"{f[2].split('sys_enter_')[1]}/req={int(f[0]) / req:.3f}")
if prof:
    ev = tot = None
    for line in open(prof):
        if line.startswith("events:"): ev = line.split()[1:]
        if line.startswith("totals:"): tot = [int(x) for x in line.split()[1:]]
    c = dict(zip(ev, tot))
    out += [f"Ir/req={c['Ir'] / req:.0f}", f"D1miss/req={(c['D1mr'] + c['D1mw']) / req:.1f}",
            f"LLmiss/req={(c['DLmr'] + c['DLmw']) / req:.2f}", f"profile={prof}"]
print("\t".join(out))
P
