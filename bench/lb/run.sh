#!/usr/bin/env bash
# rampart lb against HAProxy and nginx, side by side, one worker thread each.
#
#   bash bench/lb/run.sh [--rounds N] [--duration S] [--only cpu|kill|idle|tls]
#                        [--balancers haproxy,nginx,rampart] [--idle-conns N] [--no-build]
#                        (also floor-epoll, floor-tokio, floor-uring: bench/io-floor, the data
#                         path alone in three I/O models; cpu scenario only)
#                        [--quiet-wait S]   (wait up to S s before each cpu run for CPU 0 to be idle)
#                        [--rampart-rev REV] (build rampart from that commit, not the working tree)
#                        [--baseline PATH]  (another rampart build, measured in the same rounds as
#                                            the column rampart-base: a change's effect apart
#                                            from the host's drift)
#                        [--rate R]  (cpu and tls at a fixed R requests/s with h2load, not wrk's
#                                     closed loop; percentiles from h2load's per-request log)
#
# Method (shared/ENGINEERING.md, "How the anchor figures were measured here"):
# every balancer runs ONE worker thread pinned to CPU 0; wrk and the two nginx backends run on
# CPU 1. Three scenarios:
#   cpu   alternating wrk runs (order rotated each round): requests/s, p50, p99 and the balancer's
#         CPU microseconds per request (utime+stime of all its processes, /proc/PID/stat);
#   kill  SIGKILL one of two backends 3 s into an 8 s wrk run; count the errors clients see;
#   idle  hold N idle keep-alive client connections; resident memory per connection;
#   tls   the cpu scenario over HTTPS (TLS terminated by the balancer, same self-signed ECDSA
#         P-256 certificate for all, HTTP/1.1 keep-alive; not run by default: --only tls).
# Medians and ratios to HAProxy go to bench/results/lb-<timestamp>.md (and are printed).
# Everything listens on loopback only; every process started here is killed on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
py() { python3 "$here/lbbench.py" "$@"; }

rounds=8
duration=3
only=""
balancers="haproxy,nginx,rampart"
idle_n=8000
build=1
quiet_wait=20
rampart_rev=""
rate=0
cmdline="bash bench/lb/run.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --balancers) balancers=$2; shift 2 ;;
    --idle-conns) idle_n=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --quiet-wait) quiet_wait=$2; shift 2 ;;
    --rampart-rev) rampart_rev=$2; shift 2 ;;
    --baseline) base_bin=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$only" in ""|cpu|kill|idle|tls) ;; *) echo "--only takes cpu, kill, idle or tls" >&2; exit 2 ;; esac
[[ "$rounds" =~ ^[0-9]+$ && "$rounds" -ge 1 && "$rounds" -le 100 ]] || { echo "--rounds: 1..100" >&2; exit 2; }
[[ "$duration" =~ ^[0-9]+$ && "$duration" -ge 1 && "$duration" -le 60 ]] || { echo "--duration: 1..60 s" >&2; exit 2; }
[[ "$quiet_wait" =~ ^[0-9]+$ && "$quiet_wait" -le 600 ]] || { echo "--quiet-wait: 0..600 s" >&2; exit 2; }
[[ "$rate" =~ ^[0-9]+$ && "$rate" -le 1000000 ]] || { echo "--rate: 0..1000000 requests/s" >&2; exit 2; }
[ "$rate" = 0 ] || [ "$rate" -ge 50 ] || { echo "--rate: at least 50 (one request/s per connection)" >&2; exit 2; }
[[ "$idle_n" =~ ^[0-9]+$ && "$idle_n" -ge 1 && "$idle_n" -le 8500 ]] || { echo "--idle-conns: 1..8500" >&2; exit 2; }
if [ -n "$only" ]; then scenarios=$only; else scenarios="cpu kill idle"; fi

log() { echo "[bench $(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------------------------------------ setup
bash "$repo/scripts/deps.sh"
for c in haproxy nginx wrk taskset setsid curl python3; do
  command -v "$c" >/dev/null || die "$c is missing"
done
[ "$rate" = 0 ] || command -v h2load >/dev/null || die "h2load is missing (Debian package nghttp2-client)"
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (balancer on CPU 0, load and backends on CPU 1)"
# The idle scenario needs ~2 fds per connection in the balancer: take the hard limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
if [ "$nofile" != unlimited ] && [ "$nofile" -lt $((2 * idle_n + 500)) ]; then
  die "open-file limit $nofile is too low for $idle_n idle connections (use --idle-conns)"
fi
clk_tck=$(getconf CLK_TCK)

pending=()
want=()
IFS=, read -r -a want <<<"$balancers"
if [ -n "${base_bin:-}" ]; then
  [ -x "$base_bin" ] && "$base_bin" lb --help 2>&1 | grep -q -- '--listen' \
    || die "--baseline $base_bin: not a rampart binary with lb --listen"
  want+=(rampart-base)
fi
active=()
for b in "${want[@]}"; do
  case "$b" in haproxy|nginx|rampart|rampart-base) ;; floor-epoll|floor-tokio|floor-uring) floor=1 ;; *) die "unknown balancer $b" ;; esac
done
if [ -n "${floor:-}" ]; then
  [ "$scenarios" = cpu ] || die "the floor-* balancers run the cpu scenario only (--only cpu)"
  floor_bin=${CARGO_TARGET_DIR:-$repo/target}/io-floor/release/io-floor
  (cd "$repo/bench/io-floor" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}/io-floor" \
    cargo build --release -q) >&2 || die "bench/io-floor did not build"
fi
target_dir=${CARGO_TARGET_DIR:-$repo/target}
rampart_bin=${RAMPART_BIN:-$target_dir/release/rampart}
src=$repo
if [ -n "$rampart_rev" ]; then
  # Build exactly that commit: a clean export of it, so other edits in the working tree do not count.
  rev=$(git -C "$repo" rev-parse --verify "$rampart_rev^{commit}") || die "unknown revision $rampart_rev"
  src="$target_dir/bench-src"
  if [ "$(cat "$src/.bench-rev" 2>/dev/null)" != "$rev" ]; then
    rm -rf "$src"
    mkdir -p "$src"
    git -C "$repo" archive "$rev" | tar -x -C "$src"
    # git archive stamps files with the commit time: make them newer than any earlier build so
    # cargo cannot take another revision's artifacts for fresh.
    find "$src" -type f -exec touch {} +
    echo "$rev" >"$src/.bench-rev"
  fi
  # Its own target dir (seeded with the dependencies already built), so that these artifacts never
  # pass for the working tree's in the main target dir, nor the other way round.
  rev_target="$target_dir/bench-rev"
  if [ ! -d "$rev_target/release" ] && [ -d "$target_dir/release" ]; then
    mkdir -p "$rev_target"
    cp -a "$target_dir/release" "$rev_target/"
  fi
  target_dir=$rev_target
  [ -n "${RAMPART_BIN:-}" ] || rampart_bin=$target_dir/release/rampart
  rampart_commit=$(git -C "$repo" rev-parse --short "$rev")
else
  rampart_commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$repo" status --porcelain -- crates Cargo.lock Cargo.toml 2>/dev/null)" ]; then
    rampart_commit="$rampart_commit + uncommitted changes in crates/"
  fi
fi
for b in "${want[@]}"; do
  if [ "$b" = rampart ]; then
    built=1
    if [ "$build" = 1 ] && [ -z "${RAMPART_BIN:-}" ]; then
      log "building rampart (release) from $src"
      if ! (cd "$src" && CARGO_TARGET_DIR="$target_dir" cargo build --release -p rampart --bin rampart) >&2; then
        log "rampart did not build: not measuring an older binary"
        built=0
      fi
    fi
    if [ "$built" = 1 ] && [ -x "$rampart_bin" ] && "$rampart_bin" lb --help 2>&1 | grep -q -- '--listen'; then
      active+=(rampart)
    else
      log "rampart lb quick mode is not available ($rampart_bin lb --listen): its column is pending"
      pending+=(rampart)
    fi
  else
    active+=("$b")
  fi
done
[ ${#active[@]} -ge 1 ] || die "no balancer to measure"
# From here on this driver (and every helper it runs) stays on CPU 1, leaving CPU 0 to the balancer.
taskset -cp 1 $$ >/dev/null

work=$(mktemp -d /tmp/rampart-bench-lb.XXXXXX)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results="$repo/bench/results"
mkdir -p "$results"
log "work dir $work"

# ------------------------------------------------------------------------------------ processes
# Each process is started in its own session (setsid execs in place, so $! is the group id);
# stop() ends that group only. The trap ends every group still alive, on success, failure or ^C.
GROUPS_ALIVE=()
stop() {
  local pg=$1 i
  kill -TERM -- "-$pg" 2>/dev/null || true
  for i in $(seq 1 30); do
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

# start CPU LOGNAME cmd... ; sets STARTED to the pid (= process group id)
start() {
  local cpu=$1 name=$2
  shift 2
  taskset -c "$cpu" setsid "$@" >"$work/$name.log" 2>&1 </dev/null &
  STARTED=$!
  GROUPS_ALIVE+=("$STARTED")
}

# wait_http PORT [tls] : until GET / answers 200 through it (at most 10 s)
wait_http() {
  local port=$1 i scheme=http
  [ "${2:-}" = tls ] && scheme=https
  for i in $(seq 1 100); do
    if [ "$(curl -s -k -m 1 -o /dev/null -w '%{http_code}' "$scheme://127.0.0.1:$port/" 2>/dev/null)" = 200 ]; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# ------------------------------------------------------------------------------------ backends
# nginx, one process (master_process off, so SIGKILL takes the whole backend down), a short 200.
backend_conf() {
  local name=$1 port=$2 dir="$work/$1"
  mkdir -p "$dir/logs"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 8192;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path $dir/tmp;
  server {
    listen 127.0.0.1:$port backlog=4096;
    location / { default_type text/plain; return 200 "hello from $name\n"; }
  }
}
EOF
}
BACKEND_PIDS=()
start_backends() {
  read -r B1 B2 <<<"$(py freeport 2)"
  BACKEND_PIDS=()
  local i=1 port
  for port in "$B1" "$B2"; do
    backend_conf "backend$i" "$port"
    start 1 "backend$i" nginx -e stderr -p "$work/backend$i" -c "$work/backend$i/nginx.conf"
    BACKEND_PIDS+=("$STARTED")
    wait_http "$port" || die "backend$i did not start (see $work/backend$i.log)"
    i=$((i + 1))
  done
}
stop_backends() {
  local pg
  for pg in "${BACKEND_PIDS[@]}"; do stop "$pg"; done
  BACKEND_PIDS=()
}

# ------------------------------------------------------------------------------------ balancers
# conf_haproxy MODE PORT ; MODE is plain (cpu, idle) or careful (kill: checks, retries, redispatch)
conf_haproxy() {
  local mode=$1 port=$2 dir="$work/haproxy-$1" chk="" ssl=""
  [ "$mode" = tls ] && ssl=" ssl crt $work/tls/combined.pem alpn http/1.1"
  mkdir -p "$dir"
  [ "$mode" = careful ] && chk=" check inter 1s fall 2 rise 2"
  {
    cat <<EOF
global
  nbthread 1
  maxconn 8900
  pidfile $dir/haproxy.pid
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
EOF
    if [ "$mode" = careful ]; then
      cat <<EOF
  option redispatch
  retries 3
  retry-on all-retryable-errors
EOF
    fi
    cat <<EOF
frontend fe
  bind 127.0.0.1:$port$ssl
  maxconn 8900
  default_backend be
backend be
  balance roundrobin
EOF
    [ "$mode" = careful ] && echo "  option httpchk GET /"
    echo "  server s1 127.0.0.1:$B1$chk"
    echo "  server s2 127.0.0.1:$B2$chk"
  } >"$dir/haproxy.cfg"
  haproxy -c -q -f "$dir/haproxy.cfg" >/dev/null || die "haproxy rejects $dir/haproxy.cfg"
}
conf_nginx() {
  local mode=$1 port=$2 dir="$work/nginx-$1" ssl="" sslconf=""
  if [ "$mode" = tls ]; then
    ssl=" ssl"
    sslconf="ssl_certificate $work/tls/cert.pem; ssl_certificate_key $work/tls/key.pem;"
  fi
  mkdir -p "$dir/logs"
  chmod 755 "$work" "$dir"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 19500;
pid $dir/nginx.pid;
error_log $dir/error.log error;
events { worker_connections 9500; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path $dir/client_tmp;
  proxy_temp_path $dir/proxy_tmp;
  upstream be {
    server 127.0.0.1:$B1;
    server 127.0.0.1:$B2;
    keepalive 64;
    keepalive_requests 10000000;
  }
  server {
    listen 127.0.0.1:$port$ssl backlog=4096;
    $sslconf
    location / {
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_connect_timeout 2s;
      proxy_next_upstream error timeout;
    }
  }
}
EOF
  nginx -t -q -e stderr -p "$dir" -c "$dir/nginx.conf" 2>/dev/null || die "nginx rejects $dir/nginx.conf"
}

# start_balancer NAME MODE PORT ; sets BAL_PID
start_balancer() {
  local name=$1 mode=$2 port=$3
  case "$name" in
    haproxy)
      conf_haproxy "$mode" "$port"
      start 0 "haproxy-$mode" haproxy -W -f "$work/haproxy-$mode/haproxy.cfg"
      ;;
    nginx)
      conf_nginx "$mode" "$port"
      start 0 "nginx-$mode" nginx -e stderr -p "$work/nginx-$mode" -c "$work/nginx-$mode/nginx.conf"
      ;;
    rampart|rampart-base)
      local hc=none bin=$rampart_bin
      [ "$name" = rampart-base ] && bin=$base_bin
      [ "$mode" = careful ] && hc=http:/
      if [ "$mode" = tls ]; then
        cat >"$work/rampart-tls.toml" <<CONF
[forwarded]
headers = ["x-forwarded-for"]

[[listener]]
name = "fe"
address = "127.0.0.1:$port"
pool = "be"
tls = { cert = "$work/tls/cert.pem", key = "$work/tls/key.pem" }

[[pool]]
name = "be"
algorithm = "round-robin"
servers = [{ address = "127.0.0.1:$B1" }, { address = "127.0.0.1:$B2" }]
health_check = { kind = "none" }
CONF
        start 0 "$name-$mode" env RUST_LOG=warn "$bin" lb --config "$work/rampart-tls.toml" --threads 1
      else
        start 0 "$name-$mode" env RUST_LOG=warn "$bin" lb --listen "127.0.0.1:$port" \
          --backend "127.0.0.1:$B1" --backend "127.0.0.1:$B2" --algorithm round-robin \
          --mode http --health-check "$hc" --threads 1 --forwarded-headers x-forwarded-for
      fi
      ;;
    floor-*)
      start 0 "$name-$mode" "$floor_bin" "${name#floor-}" "127.0.0.1:$port" "127.0.0.1:$B1" "127.0.0.1:$B2"
      ;;
  esac
  BAL_PID=$STARTED
  wait_http "$port" "$mode" || die "$name did not start (see $work/$name-$mode.log)"
}

# run_wrk PORT SECONDS OUT [LUA] ; SCHEME=https for the tls scenario
run_wrk() {
  local port=$1 secs=$2 out=$3 script=()
  [ -n "${4:-}" ] && script=(-s "$4")
  taskset -c 1 wrk -t1 -c50 -d"${secs}s" --latency "${script[@]}" "${SCHEME:-http}://127.0.0.1:$port/" >"$out" 2>&1
}
# A measured cpu/tls round: wrk's closed loop, or h2load at the fixed --rate (its per-request log
# beside the output gives the percentiles).
run_load() {
  local port=$1 secs=$2 out=$3
  if [ "$rate" = 0 ]; then
    run_wrk "$port" "$secs" "$out"
  else
    taskset -c 1 h2load --h1 -t1 -c50 --rps $((rate / 50)) -D "$secs" --log-file="$out.log" \
      "${SCHEME:-http}://127.0.0.1:$port/" >"$out" 2>&1
  fi
}
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# ------------------------------------------------------------------------------------ meta
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
 "scenarios": "$scenarios", "rounds": $rounds, "duration": $duration, "idle_n": $idle_n,
 "rate": $rate, "h2load": "$(command -v h2load >/dev/null && h2load --version 2>&1 | head -1 || echo none)"}
EOF

# ------------------------------------------------------------------------------------ cpu
# scenario_cpu [tls] : plain HTTP, or HTTPS terminated by the balancer (records to tls.tsv)
scenario_cpu() {
  local mode=${1:-plain} rec=cpu
  if [ "$mode" = tls ]; then
    rec=tls
    export SCHEME=https
    mkdir -p "$work/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -subj /CN=localhost -keyout "$work/tls/key.pem" -out "$work/tls/cert.pem" 2>/dev/null \
      || die "openssl could not make a certificate"
    cat "$work/tls/cert.pem" "$work/tls/key.pem" >"$work/tls/combined.pem"
  fi
  log "scenario $rec: ${#active[@]} balancers x $rounds rounds x ${duration}s"
  start_backends
  declare -A port pid
  local b r i n
  for b in "${active[@]}"; do
    port[$b]=$(py freeport 1)
    start_balancer "$b" "$mode" "${port[$b]}"
    pid[$b]=$BAL_PID
    run_wrk "${port[$b]}" 1 "$work/$rec-warmup-$b.txt" # warm-up, not recorded
  done
  printf 'balancer\tround\trequests\trps\tp50_us\tp99_us\tcpu_us_per_req\terrors\tother_cpu0_pct\tuser_us_per_req\n' >"$work/$rec.tsv"
  n=${#active[@]}
  for r in $(seq 1 "$rounds"); do
    for i in $(seq 0 $((n - 1))); do
      b=${active[$(((i + r - 1) % n))]}
      local t0 t1 c0 c1 out="$work/$rec-$r-$b.txt"
      py quiet --max-wait "$quiet_wait" || true # let other work on this machine leave CPU 0
      t0=$(py ticks "${pid[$b]}")
      u0=$(py uticks "${pid[$b]}")
      c0=$(py cpu0)
      run_load "${port[$b]}" "$duration" "$out"
      c1=$(py cpu0)
      t1=$(py ticks "${pid[$b]}")
      u1=$(py uticks "${pid[$b]}")
      py cpurow "$out" "$b" "$r" "$t0" "$t1" "$clk_tck" "$c0" "$c1" "$u0" "$u1" >>"$work/$rec.tsv"
      log "$rec round $r $b: $(tail -1 "$work/$rec.tsv" | cut -f3-)"
    done
  done
  for b in "${active[@]}"; do stop "${pid[$b]}"; done
  stop_backends
  unset SCHEME
}
scenario_tls() { scenario_cpu tls; }

# ------------------------------------------------------------------------------------ kill
scenario_kill() {
  log "scenario kill: per balancer, SIGKILL one of two backends 3 s into an 8 s run"
  printf 'balancer\trequests\tnon2xx\tsock_errors\terrors\tstatuses\n' >"$work/kill.tsv"
  local b p out wp
  for b in "${active[@]}"; do
    start_backends
    p=$(py freeport 1)
    # BENCH_KILL_MODE=plain runs this scenario without checks or retries: a check of the harness
    # itself (it must then count errors).
    start_balancer "$b" "${BENCH_KILL_MODE:-careful}" "$p"
    sleep 2 # let the first health checks pass
    out="$work/kill-$b.txt"
    run_wrk "$p" 8 "$out" "$here/status.lua" &
    wp=$!
    sleep 3
    kill -KILL -- "-${BACKEND_PIDS[0]}"
    wait "${BACKEND_PIDS[0]}" 2>/dev/null || true
    ! kill -0 "${BACKEND_PIDS[0]}" 2>/dev/null || die "backend1 survived SIGKILL"
    curl -s -m 1 -o /dev/null "http://127.0.0.1:$B1/" && die "backend1 still answers after SIGKILL"
    wait "$wp" || die "wrk failed against $b (see $out)"
    py killrow "$out" "$b" >>"$work/kill.tsv"
    log "kill $b: $(tail -1 "$work/kill.tsv" | cut -f2-)"
    stop "$BAL_PID"
    stop_backends
  done
}

# ------------------------------------------------------------------------------------ idle
scenario_idle() {
  log "scenario idle: $idle_n idle keep-alive connections per balancer"
  printf 'balancer\theld\talive\trss_before\trss_after\tbytes_per_conn\n' >"$work/idle.tsv"
  local b p before after held alive i ready cpid
  for b in "${active[@]}"; do
    start_backends
    p=$(py freeport 1)
    start_balancer "$b" plain "$p"
    for i in $(seq 1 20); do curl -s -o /dev/null "http://127.0.0.1:$p/"; done
    sleep 1
    before=$(py rss "$BAL_PID")
    ready="$work/idle-$b.ready"
    start 1 "idle-client-$b" python3 "$here/lbbench.py" idle --port "$p" --n "$idle_n" \
      --hold 90 --ready-file "$ready"
    cpid=$STARTED
    for i in $(seq 1 600); do [ -s "$ready" ] && break; sleep 0.1; done
    [ -s "$ready" ] || die "idle client did not finish opening connections to $b in 60 s"
    sleep 2
    after=$(py rss "$BAL_PID")
    held=$(cat "$ready")
    kill -USR1 "$cpid"
    for i in $(seq 1 100); do [ -s "$ready.alive" ] && break; sleep 0.1; done
    alive=$(cat "$ready.alive" 2>/dev/null || echo "?")
    stop "$cpid"
    [ "$held" -gt 0 ] || die "no idle connection could be opened to $b (see $work/idle-client-$b.log)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$b" "$held" "$alive" "$before" "$after" \
      "$(((after - before) / held))" >>"$work/idle.tsv"
    log "idle $b: $(cat "$work/idle-client-$b.log" | tr '\n' ' ') rss $before -> $after"
    stop "$BAL_PID"
    stop_backends
  done
}

for s in $scenarios; do "scenario_$s"; done

# ------------------------------------------------------------------------------------ report
out="$results/lb-$stamp.md"
plot=""
python3 -c 'import matplotlib' 2>/dev/null && plot="$results/lb-$stamp.png"
pend=$(IFS=,; echo "${pending[*]:-}")
act=$(IFS=,; echo "${active[*]}")
py report --dir "$work" --out "$out" --balancers "$act" --pending "$pend" --plot "$plot"
mkdir -p "$results/lb-$stamp-raw"
cp "$work"/*.tsv "$work"/*.txt "$work/meta.json" "$results/lb-$stamp-raw/" 2>/dev/null || true
log "report: $out (raw wrk outputs in $results/lb-$stamp-raw/)"
