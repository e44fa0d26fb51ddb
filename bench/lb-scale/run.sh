#!/usr/bin/env bash
# rampart lb against HAProxy 2.6 as the pool grows: CPU per request with 2 .. 10,000 servers per
# algorithm, side by side in one run, and the balancers' memory with the pool.
#
#   bash bench/lb-scale/run.sh [--sizes 2,100,1000,10000] [--algorithms rr,lc,hash,p2c,lrt]
#                              [--rounds 6] [--duration 3] [--no-build] [--quiet-wait S]
#                              [--discovery N]   (0: skip the discovery scenario; default 10000)
#                              [--rate R]   (measure at a fixed R requests/s with h2load instead of
#                                            wrk's closed loop; 0, the default: wrk)
#                              [--floor]    (for rr and p2c, also bench/io-floor's tokio-rr or
#                                            tokio-p2c in the same rounds: a proxy with no features)
#
# Method (as bench/lb/run.sh, whose helpers it uses): each balancer runs ONE worker thread pinned
# to CPU 0; wrk (1 thread, 64 connections) and the two nginx backends run on CPU 1. The servers
# of a pool are distinct loopback addresses 127.0.x.y: even ones reach nginx 1, odd ones nginx 2
# (each nginx listens on its addresses only), health checks off. For each pool size and
# algorithm, rampart and HAProxy are started with the same servers, warmed up (every server gets
# requests, so both hold upstream connections to all of them); all pool sizes of an algorithm run
# at once and each round measures every size and both balancers (both orders swapped each round), for
# `duration` seconds after 1 s of unmeasured load: the balancer's utime+stime over the requests
# wrk completed. Medians per cell; growth = median at N servers / median at the smallest size;
# ratio = rampart / HAProxy; the report also gives both within each round. RSS of each balancer is read after start (before traffic) and
# after its last round (with its upstream connections).
#
# Algorithms and their HAProxy counterpart:
#   rr   round-robin            roundrobin
#   lc   least-connections      leastconn
#   hash source-ip-hash         source + hash-type consistent  (wrk has one source address:
#                                                               every request hashes alike)
#   p2c  random-two-choices     random(2)
#   lrt  least-response-time    random(2)  (HAProxy has no response-time algorithm)
# Discovery: etcd (on CPU 1) and a rampart whose pool has 2 static servers plus `discovery`, under
# wrk traffic; N records are written in transactions of 100 and the time until the pool has them
# all (polling /api/state) is reported with what wrk saw meanwhile (errors, max latency), rampart's
# RSS before and after, and the time for a fresh rampart to start with the N records present.
# HAProxy gets `http-reuse always` and `pool-purge-delay 300s`, rampart `timeouts = { idle =
# "300s" }`: neither closes its idle server connections during a run.
# With --rate R, the measured rounds use h2load (64 HTTP/1.1 connections, R/64 requests/s each)
# instead of wrk: every balancer serves the same request rate at every pool size, so a change of
# CPU per request is the balancer's work, not a change of rate (a balancer that idles more pays
# more sleeps and wake-ups per request). R must be below what both balancers sustain.
# Report: bench/results/lb-scale-<timestamp>.md (+ raw TSV). Loopback only; every process started
# here is killed on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
lbpy() { python3 "$repo/bench/lb/lbbench.py" "$@"; }

sizes=2,100,1000,10000
algos=rr,lc,hash,p2c,lrt
rounds=6
duration=3
build=1
quiet_wait=10
disc_n=10000
rate=0
floor=0
cmdline="bash bench/lb-scale/run.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) sizes=$2; shift 2 ;;
    --algorithms) algos=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --quiet-wait) quiet_wait=$2; shift 2 ;;
    --discovery) disc_n=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --floor) floor=1; shift ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$rounds" =~ ^[0-9]+$ && "$rounds" -ge 1 && "$rounds" -le 50 ]] || { echo "--rounds: 1..50" >&2; exit 2; }
[[ "$duration" =~ ^[0-9]+$ && "$duration" -ge 1 && "$duration" -le 60 ]] || { echo "--duration: 1..60 s" >&2; exit 2; }
IFS=, read -r -a SIZES <<<"$sizes"
IFS=, read -r -a ALGOS <<<"$algos"
max_size=0
sum_sizes=0
for n in "${SIZES[@]}"; do
  [[ "$n" =~ ^[0-9]+$ && "$n" -ge 1 && "$n" -le 10000 ]] || { echo "--sizes: 1..10000 each" >&2; exit 2; }
  [ "$n" -gt "$max_size" ] && max_size=$n
  sum_sizes=$((sum_sizes + n))
done
[[ "$disc_n" =~ ^[0-9]+$ && "$disc_n" -le 20000 ]] || { echo "--discovery: 0..20000" >&2; exit 2; }
[[ "$rate" =~ ^[0-9]+$ && "$rate" -le 1000000 ]] || { echo "--rate: 0..1000000 requests/s" >&2; exit 2; }
[ "$rate" = 0 ] || [ "$rate" -ge 64 ] || { echo "--rate: at least 64 (one request/s per connection)" >&2; exit 2; }
# Loopback addresses the backends listen on: the largest pool, or the discovered servers + 2.
n_addrs=$max_size
[ "$disc_n" -gt 0 ] && [ $((disc_n + 2)) -gt "$n_addrs" ] && n_addrs=$((disc_n + 2))
for a in "${ALGOS[@]}"; do
  case "$a" in rr|lc|hash|p2c|lrt) ;; *) echo "unknown algorithm $a (rr, lc, hash, p2c, lrt)" >&2; exit 2 ;; esac
done

log() { echo "[lb-scale $(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }

bash "$repo/scripts/deps.sh"
for c in haproxy nginx wrk taskset setsid curl python3; do
  command -v "$c" >/dev/null || die "$c is missing"
done
[ "$rate" = 0 ] || command -v h2load >/dev/null || die "h2load is missing (Debian package nghttp2-client)"
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (balancer on CPU 0, load and backends on CPU 1)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
if [ "$nofile" != unlimited ] && [ "$nofile" -lt $((n_addrs + 4000)) ]; then
  die "open-file limit $nofile is too low for $n_addrs servers"
fi
clk_tck=$(getconf CLK_TCK)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
rampart_bin=${RAMPART_BIN:-$target_dir/release/rampart}
rampart_commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$repo" status --porcelain -- crates Cargo.lock Cargo.toml 2>/dev/null)" ]; then
  rampart_commit="$rampart_commit + uncommitted changes in crates/"
fi
if [ "$build" = 1 ] && [ -z "${RAMPART_BIN:-}" ]; then
  log "building rampart (release)"
  (cd "$repo" && cargo build --release -p rampart --bin rampart) >&2 || die "rampart did not build"
fi
[ -x "$rampart_bin" ] || die "no rampart binary at $rampart_bin"
if [ "$floor" = 1 ]; then
  floor_bin=$target_dir/io-floor/release/io-floor
  (cd "$repo/bench/io-floor" && CARGO_TARGET_DIR="$target_dir/io-floor" cargo build --release -q) >&2 ||
    die "bench/io-floor did not build"
fi
taskset -cp 1 $$ >/dev/null

work=$(mktemp -d /tmp/rampart-bench-lb-scale.XXXXXX)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results="$repo/bench/results"
mkdir -p "$results"
log "work dir $work"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

GROUPS_ALIVE=()
stop() {
  local pg=$1 i
  kill -TERM -- "-$pg" 2>/dev/null || true
  for i in $(seq 1 50); do
    kill -0 -- "-$pg" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pg" 2>/dev/null || true
  wait "$pg" 2>/dev/null || true
  local keep=() g
  for g in "${GROUPS_ALIVE[@]}"; do [ "$g" = "$pg" ] || keep+=("$g"); done
  GROUPS_ALIVE=("${keep[@]}")
}
cleanup() {
  local rc=$? pg
  trap - EXIT INT TERM
  for pg in "${GROUPS_ALIVE[@]}"; do stop "$pg"; done
  if [ $rc -eq 0 ]; then rm -rf "$work"; else log "failed (exit $rc); logs kept in $work"; fi
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
# wait_http PORT [SECONDS]
wait_http() {
  local port=$1 tries=$((${2:-10} * 10)) i
  for i in $(seq 1 "$tries"); do
    [ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" 2>/dev/null)" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}
# Server i's address (without port): 127.0.x.y, x = 1 + i / 250, y = 1 + i % 250.
addr() { echo "127.0.$((1 + $1 / 250)).$((1 + $1 % 250))"; }

# ---------------------------------------------------------------------------- backends
read -r B1 B2 <<<"$(lbpy freeport 2)"
port_of() { if [ $(($1 % 2)) = 0 ]; then echo "$B1"; else echo "$B2"; fi; }
for b in 1 2; do
  dir="$work/backend$b"
  mkdir -p "$dir"
  port=$B1
  [ $b = 2 ] && port=$B2
  {
    cat <<EOF
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile $((sum_sizes + n_addrs + 4000));
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $((sum_sizes + n_addrs + 2000)); }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 600s;
  client_body_temp_path $dir/tmp;
  server {
EOF
    for ((i = b - 1; i < n_addrs; i += 2)); do echo "    listen $(addr $i):$port backlog=1024;"; done
    echo "    location / { default_type text/plain; return 200 \"hello from backend$b\\n\"; }"
    echo "  }"
    echo "}"
  } >"$dir/nginx.conf"
  start 1 "backend$b" nginx -e stderr -p "$dir" -c "$dir/nginx.conf"
done
for i in 0 1 $((n_addrs - 1)); do
  [ "$i" -lt "$n_addrs" ] || continue
  ok=0
  for t in $(seq 1 100); do
    if [ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' "http://$(addr "$i"):$(port_of "$i")/")" = 200 ]; then ok=1; break; fi
    sleep 0.1
  done
  [ $ok = 1 ] || die "backend for server $i ($(addr "$i")) did not start (see $work/backend*.log)"
done
log "backends up: $n_addrs loopback addresses on ports $B1, $B2"

# ---------------------------------------------------------------------------- balancers
rampart_algo() {
  case "$1" in rr) echo round-robin ;; lc) echo least-connections ;; hash) echo source-ip-hash ;;
    p2c) echo random-two-choices ;; lrt) echo least-response-time ;; esac
}
haproxy_algo() {
  case "$1" in rr) echo roundrobin ;; lc) echo leastconn ;; hash) printf 'source\n  hash-type consistent' ;;
    p2c|lrt) echo 'random(2)' ;; esac
}
# conf_rampart ALGO N PORT FILE
conf_rampart() {
  local algo=$1 n=$2 port=$3 f=$4 i
  {
    cat <<EOF
[forwarded]
headers = ["x-forwarded-for"]

[[listener]]
name = "fe"
address = "127.0.0.1:$port"
pool = "be"

[[pool]]
name = "be"
algorithm = "$(rampart_algo "$algo")"
health_check = { kind = "none" }
timeouts = { idle = "300s" }
servers = [
EOF
    for ((i = 0; i < n; i++)); do echo "  { name = \"s$i\", address = \"$(addr $i):$(port_of $i)\" },"; done
    echo "]"
  } >"$f"
}
conf_haproxy() {
  local algo=$1 n=$2 port=$3 f=$4 i
  {
    cat <<EOF
global
  nbthread 1
  ulimit-n 19000
  maxconn 4000
defaults
  mode http
  option http-keep-alive
  option forwardfor
  http-reuse always
  timeout connect 2s
  timeout client 120s
  timeout server 30s
  timeout http-request 10s
  timeout http-keep-alive 120s
frontend fe
  bind 127.0.0.1:$port
  maxconn 4000
  default_backend be
backend be
  balance $(haproxy_algo "$algo")
  default-server pool-purge-delay 300s
EOF
    for ((i = 0; i < n; i++)); do echo "  server s$i $(addr $i):$(port_of $i)"; done
  } >"$f"
  haproxy -c -q -f "$f" >/dev/null || die "haproxy rejects $f"
}

run_wrk() { taskset -c 1 wrk -t1 -c64 -d"$2s" --latency "http://127.0.0.1:$1/" >"$3" 2>&1; }
# A measured round: wrk's closed loop, or h2load at the fixed --rate.
run_load() {
  if [ "$rate" = 0 ]; then
    run_wrk "$@"
  else
    taskset -c 1 h2load --h1 -t1 -c64 --rps $((rate / 64)) -D "$2" "http://127.0.0.1:$1/" >"$3" 2>&1
  fi
}

printf 'size\talgorithm\tbalancer\tround\trequests\trps\tp50_us\tp99_us\tcpu_us_per_req\terrors\tother_cpu0_pct\tuser_us_per_req\n' >"$work/cpu.tsv"
printf 'size\talgorithm\tbalancer\trss_start\trss_end\tstart_s\n' >"$work/mem.tsv"
# Algorithm outside; inside, every pool size's two balancers run side by side and each round
# measures all of them, so the cells a growth or a ratio compares run seconds apart, not
# minutes (this host drifts between a fast and a slow state). Before each measured run, 1 s of
# load reopens any upstream connection the gap closed, for both balancers alike.
for algo in "${ALGOS[@]}"; do
  declare -A port=() pid=() rss0=() startup=()
  BALS=(rampart haproxy)
  floor_mode=
  if [ "$floor" = 1 ]; then
    case "$algo" in rr) floor_mode=tokio-rr ;; p2c) floor_mode=tokio-p2c ;; esac
    [ -z "$floor_mode" ] || BALS+=(floor)
  fi
  for n in "${SIZES[@]}"; do
    for b in "${BALS[@]}"; do
      k="$n-$b"
      port[$k]=$(lbpy freeport 1)
      if [ $b = rampart ]; then
        conf_rampart "$algo" "$n" "${port[$k]}" "$work/rampart-$n-$algo.toml"
        t0=$(date +%s.%N)
        start 0 "rampart-$n-$algo" env RUST_LOG=warn "$rampart_bin" lb --config "$work/rampart-$n-$algo.toml" --threads 1
      elif [ $b = haproxy ]; then
        conf_haproxy "$algo" "$n" "${port[$k]}" "$work/haproxy-$n-$algo.cfg"
        t0=$(date +%s.%N)
        start 0 "haproxy-$n-$algo" haproxy -W -f "$work/haproxy-$n-$algo.cfg"
      else
        servers=()
        for ((i = 0; i < n; i++)); do servers+=("$(addr $i):$(port_of $i)"); done
        t0=$(date +%s.%N)
        start 0 "floor-$n-$algo" "$floor_bin" "$floor_mode" "127.0.0.1:${port[$k]}" "${servers[@]}"
      fi
      pid[$k]=$STARTED
      wait_http "${port[$k]}" 60 || die "$b did not start with $n servers (see $work/$b-$n-$algo.log)"
      startup[$k]=$(python3 -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.2f}')" "$t0")
      sleep 0.5
      rss0[$k]=$(lbpy rss "${pid[$k]}")
      # Warm-up: long enough for every server to get requests (upstream connections opened).
      run_wrk "${port[$k]}" $((n >= 5000 ? 6 : (n >= 500 ? 3 : 1))) "$work/warm-$n-$algo-$b.txt"
    done
  done
  for r in $(seq 1 "$rounds"); do
    # Both orders alternate: the balancers', and the sizes' (ascending, then descending), so a
    # trend within a round (the host's load) is not read as growth.
    # (A rotation: with two balancers, their order swapped.)
    order=()
    for ((i = 0; i < ${#BALS[@]}; i++)); do order+=("${BALS[$(((i + r - 1) % ${#BALS[@]}))]}"); done
    size_order=("${SIZES[@]}")
    if [ $((r % 2)) = 0 ]; then
      size_order=()
      for ((i = ${#SIZES[@]} - 1; i >= 0; i--)); do size_order+=("${SIZES[$i]}"); done
    fi
    for n in "${size_order[@]}"; do
      for b in "${order[@]}"; do
        k="$n-$b"
        out="$work/cpu-$n-$algo-$r-$b.txt"
        lbpy quiet --max-wait "$quiet_wait" || true
        run_wrk "${port[$k]}" 1 "$work/touch-$n-$algo-$r-$b.txt"
        t0=$(lbpy ticks "${pid[$k]}")
        u0=$(lbpy uticks "${pid[$k]}")
        c0=$(lbpy cpu0)
        run_load "${port[$k]}" "$duration" "$out"
        c1=$(lbpy cpu0)
        t1=$(lbpy ticks "${pid[$k]}")
        u1=$(lbpy uticks "${pid[$k]}")
        row=$(lbpy cpurow "$out" "$b" "$r" "$t0" "$t1" "$clk_tck" "$c0" "$c1" "$u0" "$u1")
        printf '%s\t%s\t%s\n' "$n" "$algo" "$row" >>"$work/cpu.tsv"
        log "$n servers $algo round $r $b: $(echo "$row" | cut -f3,4,7,8)"
      done
    done
  done
  for n in "${SIZES[@]}"; do
    for b in "${BALS[@]}"; do
      k="$n-$b"
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$algo" "$b" "${rss0[$k]}" "$(lbpy rss "${pid[$k]}")" "${startup[$k]}" >>"$work/mem.tsv"
      stop "${pid[$k]}"
    done
  done
  unset port pid rss0 startup
done
# ---------------------------------------------------------------------------- discovery
printf 'servers\tregister_s\tapplied_s\tadmin_gap_s\trequests\terrors\tmax_latency_ms\trss_before\trss_after\tcold_start_s\n' >"$work/discovery.tsv"
if [ "$disc_n" -gt 0 ]; then
  command -v etcd >/dev/null || die "etcd is missing"
  read -r EC EP AP LP <<<"$(lbpy freeport 4)"
  start 1 etcd etcd --name bench --data-dir "$work/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$EC" --advertise-client-urls "http://127.0.0.1:$EC" \
    --listen-peer-urls "http://127.0.0.1:$EP" --initial-advertise-peer-urls "http://127.0.0.1:$EP" \
    --initial-cluster "bench=http://127.0.0.1:$EP" --quota-backend-bytes 1073741824
  etcd_pg=$STARTED
  for t in $(seq 1 100); do curl -s -m 1 "http://127.0.0.1:$EC/health" | grep -q true && break; sleep 0.1; done
  curl -s -m 1 "http://127.0.0.1:$EC/health" | grep -q true || die "etcd did not start (see $work/etcd.log)"
  cat >"$work/rampart-discovery.toml" <<EOF
[admin]
address = "127.0.0.1:$AP"

[[listener]]
name = "fe"
address = "127.0.0.1:$LP"
pool = "app"

[[pool]]
name = "app"
algorithm = "round-robin"
health_check = { kind = "none" }
servers = [{ name = "static0", address = "$(addr "$disc_n"):$(port_of "$disc_n")" }, { name = "static1", address = "$(addr $((disc_n + 1))):$(port_of $((disc_n + 1)))" }]
discovery = { etcd = ["http://127.0.0.1:$EC"], cluster = "bench", service = "app" }
EOF
  start 0 rampart-discovery env RUST_LOG=warn "$rampart_bin" lb --config "$work/rampart-discovery.toml" --threads 1
  dpid=$STARTED
  wait_http "$LP" 30 || die "rampart with discovery did not start (see $work/rampart-discovery.log)"
  run_wrk "$LP" 1 "$work/disc-warm.txt"
  rss_b=$(lbpy rss "$dpid")
  taskset -c 1 wrk -t1 -c64 -d25s --latency "http://127.0.0.1:$LP/" >"$work/disc-wrk.txt" 2>&1 &
  wrk_pid=$!
  sleep 3
  python3 "$here/discovery.py" wait --admin "http://127.0.0.1:$AP" --pool app --n $((disc_n + 2)) >"$work/disc-wait.txt" &
  wait_pid=$!
  reg_s=$(python3 "$here/discovery.py" register --etcd "http://127.0.0.1:$EC" --cluster bench --service app \
    --n "$disc_n" --addr-port "$B1,$B2")
  wait "$wait_pid" || die "the discovered servers were not applied (see $work/rampart-discovery.log)"
  read -r applied_s gap_s <"$work/disc-wait.txt"
  wait "$wrk_pid" || true
  rss_a=$(lbpy rss "$dpid")
  stop "$dpid"
  # Cold: a fresh balancer with every record already in etcd.
  t0=$(date +%s.%N)
  start 0 rampart-discovery-cold env RUST_LOG=warn "$rampart_bin" lb --config "$work/rampart-discovery.toml" --threads 1
  dpid=$STARTED
  python3 "$here/discovery.py" wait --admin "http://127.0.0.1:$AP" --pool app --n $((disc_n + 2)) >/dev/null \
    || die "a fresh rampart did not get the discovered servers (see $work/rampart-discovery-cold.log)"
  cold_s=$(python3 -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.2f}')" "$t0")
  stop "$dpid"
  stop "$etcd_pg"
  row=$(python3 "$here/discovery.py" wrkrow "$work/disc-wrk.txt")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$disc_n" "$reg_s" "$applied_s" "$gap_s" "$row" "$rss_b" "$rss_a" "$cold_s" >>"$work/discovery.tsv"
  log "discovery: $(tail -1 "$work/discovery.tsv")"
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

cat >"$work/meta.json" <<EOF
{"when": "$(date -u '+%Y-%m-%d %H:%M UTC')",
 "command": "$cmdline",
 "rampart_commit": "$rampart_commit",
 "cpus": $(getconf _NPROCESSORS_ONLN),
 "cpu_model": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')",
 "kernel": "$(uname -r)",
 "haproxy": "$(haproxy -v | head -1 | awk '{print "HAProxy " $3}')",
 "nginx": "$(nginx -v 2>&1 | sed 's/.*nginx\//nginx /')",
 "wrk": "$(wrk -v 2>&1 | head -1 | awk '{print $1 " " $2}')",
 "rounds": $rounds, "duration": $duration, "rate": $rate,
 "h2load": "$(command -v h2load >/dev/null && h2load --version 2>&1 | head -1 || echo none)",
 "load_before": "$load_before", "load_after": "$load_after"}
EOF
out="$results/lb-scale-$stamp.md"
python3 "$here/report.py" --dir "$work" --out "$out"
python3 "$here/chart.py" "$out" >/dev/null || echo "no chart drawn from $out" >&2
mkdir -p "$results/lb-scale-$stamp-raw"
cp "$work"/*.tsv "$work/meta.json" "$results/lb-scale-$stamp-raw/"
log "report: $out"
