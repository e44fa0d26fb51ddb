#!/usr/bin/env bash
# VRRP failover: what a client loses when the master balancer fails, rampart lb (VRRP v3 inside
# the balancer) against keepalived 2.2 (VRRP v3) + nginx, at the same advert interval.
#
#   bash bench/vrrp-failover/run.sh [--trials N] [--intervals 1s,100ms,50ms] [--faults link,kill,stop]
#                                   [--only rampart|keepalived] [--keep] [--rampart-rev REV]
#
# Needs root (network namespaces). Hosts are network namespaces on one bridge (10.78.0.0/24,
# names rbv<pid>-*): lb1 (.11, priority 150) and lb2 (.12, priority 100), VRID 51, preempt on,
# VIP 10.78.0.100; a web host (.21, nginx) and a client (.31).
#   rampart     `rampart lb` on lb1 and lb2, the site listener on VIP:80 -> nginx on the web host
#   keepalived  keepalived --vrrp on lb1 and lb2 + nginx on 0.0.0.0:80 on each of them
# 50ms is rampart's default advert interval: that setting runs rampart only (its default row).
# Each trial starts from fresh namespaces and processes; lb1 must be the sole holder of the VIP.
# The client (failover.py probe) starts an HTTP GET (new connection, 200 ms timeout) to the VIP
# every 10 ms; 2 s in comes the fault:
#   link  the master's bridge port goes down (ip -n SW link set PORT down), as a pulled cable
#   kill  SIGKILL to the master: every keepalived process of lb1 / the rampart lb process
#   stop  SIGTERM to the same
# Figure of a trial: the longest time between the starts of two successful probes (the gap),
# and the failed probes. The report (median (min-max) per row, ratio rampart/keepalived per
# interval, every trial) goes to bench/results/vrrp-failover-<UTC timestamp>.md.
# rampart is built in release (with --rampart-rev, from a clean export of that commit) unless
# RAMPART_BIN is given (then --rampart-rev only names its commit in the report). Everything started is stopped and
# every namespace removed on exit (also on Ctrl-C); --keep keeps the per-trial logs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cmdline="bash bench/vrrp-failover/run.sh $*"

trials=5
intervals="1s,100ms,50ms"
faults="link,kill,stop"
only=""
keep=0
rampart_rev=""
while [ $# -gt 0 ]; do
  case "$1" in
    --trials) trials=$2; shift 2 ;;
    --intervals) intervals=$2; shift 2 ;;
    --faults) faults=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --rampart-rev) rampart_rev=$2; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$trials" =~ ^[0-9]+$ && "$trials" -ge 1 && "$trials" -le 50 ]] || { echo "--trials: 1..50" >&2; exit 2; }
case "$only" in ""|rampart|keepalived) ;; *) echo "--only takes rampart or keepalived" >&2; exit 2 ;; esac
IFS=, read -r -a FAULTS <<<"$faults"
IFS=, read -r -a INTERVALS <<<"$intervals"
for f in "${FAULTS[@]}"; do
  case "$f" in link|kill|stop) ;; *) echo "unknown fault $f (link, kill, stop)" >&2; exit 2 ;; esac
done
# interval -> milliseconds (10 ms steps, as VRRPv3 has them)
iv_ms() {
  local v=$1
  if [[ "$v" =~ ^([0-9]+)ms$ ]]; then echo "${BASH_REMATCH[1]}"
  elif [[ "$v" =~ ^([0-9]+)s$ ]]; then echo $((BASH_REMATCH[1] * 1000))
  else return 1; fi
}
for iv in "${INTERVALS[@]}"; do
  ms=$(iv_ms "$iv") || { echo "bad interval $iv (e.g. 1s, 100ms)" >&2; exit 2; }
  [ "$ms" -ge 10 ] && [ "$ms" -le 40950 ] && [ $((ms % 10)) -eq 0 ] || { echo "interval $iv: 10ms-40.95s in 10 ms steps" >&2; exit 2; }
done
RAMPART_DEFAULT=50ms

log() { echo "[vrrp-bench $(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces)"

# ------------------------------------------------------------------------------ setup
bash "$repo/scripts/deps.sh"
for c in ip keepalived nginx python3 curl timeout setsid; do
  command -v "$c" >/dev/null || die "$c is missing"
done
# The probe is the instrument: real-time priority, so that other work on the machine does not
# delay its 10 ms schedule (the balancers under test get no such help).
RT=()
if command -v chrt >/dev/null && chrt -f 20 true 2>/dev/null; then RT=(chrt -f 20); fi
want_rampart=1
[ "$only" = keepalived ] && want_rampart=0
rampart_bin=${RAMPART_BIN:-}
target_dir=${CARGO_TARGET_DIR:-$repo/target}
if [ -n "$rampart_rev" ]; then
  rev=$(git -C "$repo" rev-parse --verify "$rampart_rev^{commit}") || die "unknown revision $rampart_rev"
  commit=$(git -C "$repo" rev-parse --short "$rev")
else
  commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$repo" status --porcelain -- crates Cargo.lock Cargo.toml 2>/dev/null)" ]; then
    commit="$commit + uncommitted changes in crates/"
  fi
fi
if [ "$want_rampart" = 1 ]; then
  if [ -z "$rampart_bin" ]; then
    src=$repo
    if [ -n "$rampart_rev" ]; then
      # Exactly that commit: a clean export, so other edits in the working tree do not count.
      src="$target_dir/vrrp-bench-src"
      if [ "$(cat "$src/.bench-rev" 2>/dev/null)" != "$rev" ]; then
        rm -rf "$src"
        mkdir -p "$src"
        git -C "$repo" archive "$rev" | tar -x -C "$src"
        find "$src" -type f -exec touch {} + # newer than any artifact of another revision
        echo "$rev" >"$src/.bench-rev"
      fi
    fi
    log "building rampart (release) from $src"
    (cd "$src" && CARGO_TARGET_DIR="$target_dir" cargo build --release -p rampart --bin rampart) >&2 \
      || die "rampart did not build"
    rampart_bin="$target_dir/release/rampart"
  elif [ -z "$rampart_rev" ]; then
    commit="$commit (RAMPART_BIN given: its source is not checked)"
  else
    commit="$commit (RAMPART_BIN given, said to be built from it)"
  fi
  [ -x "$rampart_bin" ] || die "no rampart binary at $rampart_bin"
  rampart_bin=$(readlink -f "$rampart_bin")
  "$rampart_bin" lb --help >/dev/null 2>&1 || die "$rampart_bin has no lb role"
fi

work=$(mktemp -d /tmp/rampart-bench-vrrp.XXXXXX)
chmod 755 "$work"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results="$repo/bench/results"
mkdir -p "$results"
log "work dir $work"

P="rbv$$"                      # namespace prefix
SW="$P-sw"
HOSTS=(lb1 lb2 web cli)
declare -A ADDR=([lb1]=10.78.0.11 [lb2]=10.78.0.12 [web]=10.78.0.21 [cli]=10.78.0.31)
declare -A PORT=([lb1]=p1 [lb2]=p2 [web]=p3 [cli]=p4)
VIP=10.78.0.100
VRID=51
ns() { echo "$P-$1"; }

# ------------------------------------------------------------------------------ lab
# Stop every process inside our namespaces (TERM, up to 3 s, then KILL), then remove them.
lab_down() {
  local n pids i
  for n in "${HOSTS[@]}" sw; do
    [ -e "/run/netns/$P-$n" ] || continue
    pids=$(ip netns pids "$P-$n" 2>/dev/null || true)
    [ -n "$pids" ] && kill -TERM $pids 2>/dev/null || true
  done
  for i in $(seq 1 30); do
    pids=""
    for n in "${HOSTS[@]}" sw; do
      [ -e "/run/netns/$P-$n" ] && pids="$pids $(ip netns pids "$P-$n" 2>/dev/null || true)"
    done
    [ -z "${pids// /}" ] && break
    sleep 0.1
  done
  if [ -n "${pids// /}" ]; then kill -KILL $pids 2>/dev/null || true; sleep 0.2; fi
  { wait; } 2>/dev/null || true
  for n in "${HOSTS[@]}" sw; do
    [ -e "/run/netns/$P-$n" ] && ip netns del "$P-$n" 2>/dev/null || true
  done
}
lab_up() {
  ip netns add "$SW"
  ip -n "$SW" link set lo up
  ip -n "$SW" link add br0 type bridge
  ip -n "$SW" link set br0 type bridge forward_delay 0 mcast_snooping 0
  ip -n "$SW" link set br0 up
  local h n
  for h in "${HOSTS[@]}"; do
    n=$(ns "$h")
    ip netns add "$n"
    ip -n "$n" link set lo up
    ip -n "$n" link add eth0 type veth peer name "${PORT[$h]}" netns "$SW"
    ip -n "$SW" link set "${PORT[$h]}" master br0
    ip -n "$SW" link set "${PORT[$h]}" up
    ip -n "$n" addr add "${ADDR[$h]}/24" dev eth0
    ip -n "$n" link set eth0 up
  done
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  lab_down
  if [ "$rc" -eq 0 ] && [ "$keep" = 0 ]; then rm -rf "$work"; else log "logs kept in $work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start HOST NAME cmd... : in HOST's namespace, own session; sets STARTED (its pid: setsid and
# ip netns exec both exec in place)
start() {
  local h=$1 name=$2
  shift 2
  setsid ip netns exec "$(ns "$h")" "$@" >"$tdir/$name.log" 2>&1 </dev/null &
  STARTED=$!
}
holds() { grep -q "inet $VIP/" <<<"$(ip -n "$(ns "$1")" -o -4 addr show dev eth0 2>/dev/null)"; }
# wait_until SECONDS cmd... : poll every 20 ms (whole seconds)
wait_until() {
  local end=$(($(date +%s%N) + $1 * 1000000000))
  shift
  while [ "$(date +%s%N)" -lt "$end" ]; do
    "$@" && return 0
    sleep 0.02
  done
  "$@"
}
http_ok() { # http_ok HOST URL : GET from HOST's namespace answers 200
  [ "$(ip netns exec "$(ns "$1")" curl -s -m 1 -o /dev/null -w '%{http_code}' "$2" 2>/dev/null)" = 200 ]
}
log_has() { grep -q -- "$2" "$tdir/$1.log" 2>/dev/null; }
sole_lb1() { holds lb1 && ! holds lb2; }

nginx_conf() { # nginx_conf NAME LISTEN
  local d="$tdir/$1"
  mkdir -p "$d"
  chmod 755 "$tdir" "$d"
  cat >"$d/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $d/tmp;
  server {
    listen $2 backlog=1024;
    location / { default_type text/plain; return 200 "$1\n"; }
  }
}
EOF
}

rampart_conf() { # rampart_conf HOST PRIORITY INTERVAL
  local iv_line="advert_interval = \"$3\""
  # The default row takes rampart's own default interval (not written in the file).
  [ "$3" = "$RAMPART_DEFAULT" ] && iv_line="# advert_interval: rampart's default ($RAMPART_DEFAULT)"
  cat >"$tdir/$1.toml" <<EOF
[admin]
address = "127.0.0.1:9000"

[[listener]]
name = "site"
address = "$VIP:80"
pool = "web"

[[pool]]
name = "web"
servers = [{ name = "web1", address = "${ADDR[web]}:80" }]
health_check = { kind = "tcp", interval = "200ms", timeout = "200ms" }

[shutdown]
grace = "2s"

[[vrrp]]
name = "site"
interface = "eth0"
vrid = $VRID
priority = $2
$iv_line
preempt = true
addresses = ["$VIP/24"]
EOF
}

keepalived_conf() { # keepalived_conf HOST PRIORITY STATE ADVERT_INT_S
  cat >"$tdir/$1-keepalived.conf" <<EOF
global_defs {
  router_id $1
  vrrp_version 3
  vrrp_garp_master_delay 0
  enable_script_security
}
vrrp_instance VI_1 {
  state $3
  interface eth0
  virtual_router_id $VRID
  priority $2
  advert_int $4
  virtual_ipaddress {
    $VIP/24
  }
}
EOF
}

# ------------------------------------------------------------------------------ one trial
# trial SYSTEM INTERVAL FAULT N : appends one JSON line to $work/trials.jsonl
MASTER_PID=""
trial() {
  local sys=$1 iv=$2 fault=$3 n=$4 ms s note="" remark="" fault_cmd pids master_exit="-" rc
  ms=$(iv_ms "$iv")
  s=$(python3 -c "print(f'{$ms/1000:g}')")
  tdir="$work/trial-$n-$sys-$iv-$fault"
  mkdir -p "$tdir"
  lab_up
  # Setup bound: the backup-then-master start of a rampart balancer takes 3 adverts + skew.
  local setup_s=$(((ms * 4) / 1000 + 5))
  if [ "$sys" = rampart ]; then
    nginx_conf web "${ADDR[web]}:80"
    start web web nginx -e stderr -p "$tdir/web" -c "$tdir/web/nginx.conf"
    wait_until 5 http_ok cli "http://${ADDR[web]}/" || { note="web host did not answer"; }
    rampart_conf lb1 150 "$iv"
    rampart_conf lb2 100 "$iv"
    start lb1 lb1 env RUST_LOG=info "$rampart_bin" lb --config "$tdir/lb1.toml"
    MASTER_PID=$STARTED
    [ -z "$note" ] && { wait_until "$setup_s" holds lb1 || note="lb1 never took the VIP"; }
    start lb2 lb2 env RUST_LOG=info "$rampart_bin" lb --config "$tdir/lb2.toml"
    [ -z "$note" ] && { wait_until 5 log_has lb2 'to="backup"' || note="lb2 never became backup"; }
  else
    nginx_conf lb1-nginx "0.0.0.0:80"
    nginx_conf lb2-nginx "0.0.0.0:80"
    start lb1 lb1-nginx nginx -e stderr -p "$tdir/lb1-nginx" -c "$tdir/lb1-nginx/nginx.conf"
    start lb2 lb2-nginx nginx -e stderr -p "$tdir/lb2-nginx" -c "$tdir/lb2-nginx/nginx.conf"
    wait_until 5 http_ok cli "http://${ADDR[lb1]}/" && wait_until 5 http_ok cli "http://${ADDR[lb2]}/" \
      || note="nginx on the balancer hosts did not answer"
    keepalived_conf lb1 150 MASTER "$s"
    keepalived_conf lb2 100 BACKUP "$s"
    start lb1 lb1 keepalived --dont-fork --log-console --log-detail --vrrp --use-file "$tdir/lb1-keepalived.conf" \
      --pid "$tdir/lb1-ka.pid" --vrrp_pid "$tdir/lb1-ka-vrrp.pid"
    MASTER_PID=$STARTED
    [ -z "$note" ] && { wait_until "$setup_s" holds lb1 || note="lb1 never took the VIP"; }
    start lb2 lb2 keepalived --dont-fork --log-console --log-detail --vrrp --use-file "$tdir/lb2-keepalived.conf" \
      --pid "$tdir/lb2-ka.pid" --vrrp_pid "$tdir/lb2-ka-vrrp.pid"
    [ -z "$note" ] && { wait_until 5 log_has lb2 'Entering BACKUP STATE' || note="lb2 never became backup"; }
  fi
  # Let the backup hear the master (its first advert) before checking who holds the VIP.
  sleep "$(python3 -c "print(min(1.2, $ms/1000 + 0.2))")"
  [ -z "$note" ] && { sole_lb1 || note="lb1 is not the sole holder of the VIP before the fault"; }
  [ -z "$note" ] && { wait_until 3 http_ok cli "http://$VIP/" || note="the site does not answer through the VIP"; }
  # The master's processes, for kill and stop.
  if [ "$sys" = rampart ]; then
    pids=$MASTER_PID
    [ "$(cat /proc/"$pids"/comm 2>/dev/null)" = rampart ] || [ -n "$note" ] || note="the pid of lb1 ($pids) is not rampart"
  else
    pids=""
    local p
    for p in $(ip netns pids "$(ns lb1)"); do
      [ "$(cat /proc/"$p"/comm 2>/dev/null)" = keepalived ] && pids="$pids $p"
    done
    pids=${pids# }
    [ -n "$pids" ] || [ -n "$note" ] || note="no keepalived process on lb1"
  fi
  case "$fault" in
    link) fault_cmd="ip -n $SW link set ${PORT[lb1]} down" ;;
    kill) fault_cmd="kill -KILL $pids" ;;
    stop) fault_cmd="kill -TERM $pids" ;;
  esac
  local load1 st0 st1 busy="null" line='{}'
  load1=$(cut -d' ' -f1 /proc/loadavg)
  if [ -z "$note" ]; then
    st0=$(head -1 /proc/stat)
    line=$(timeout 90 ip netns exec "$(ns cli)" "${RT[@]}" python3 "$here/failover.py" probe --vip "$VIP" \
      --out "$tdir/probe.json" --fault-at 2 --fault-cmd "$fault_cmd" \
      --master-ns "$(ns lb1)" --backup-ns "$(ns lb2)" --interval-ms "$ms" --limit 20 \
      2>"$tdir/probe.err" | tail -1) || note="the probe failed (see $tdir/probe.err)"
    st1=$(head -1 /proc/stat)
    busy=$(python3 -c '
import sys
a=[int(x) for x in sys.argv[1].split()[1:]]; b=[int(x) for x in sys.argv[2].split()[1:]]
d=[y-x for x,y in zip(a,b)]; tot=sum(d); idle=d[3]+d[4]
print(round(100*(tot-idle)/tot,1) if tot else "null")' "$st0" "$st1")
    [ -n "$line" ] || line='{}'
    # The master after the fault: a clean stop must exit 0 (rampart: after its successor
    # advertised); a kill leaves nothing.
    if [ "$fault" != link ]; then
      local alive=1 q
      for q in $(seq 1 100); do
        alive=0
        for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
      done
      if [ "$alive" = 1 ]; then
        master_exit="still running 10 s after the fault"
      else
        rc=0
        { wait "$MASTER_PID"; } 2>/dev/null || rc=$?
        master_exit="exit $rc"
      fi
    else
      ip -n "$SW" link set "${PORT[lb1]}" up # restored (the lab goes away next anyway)
    fi
    if [ "$sys" = rampart ] && [ "$fault" = stop ]; then
      log_has lb1 'uccessor' || remark="the log of lb1 names no successor-seen (handover)"
    fi
  fi
  lab_down
  python3 - "$line" "$sys" "$iv" "$fault" "$n" "$note" "$load1" "$busy" "$master_exit" "$tdir" "$remark" >>"$work/trials.jsonl" <<'PY'
import json, sys
line, sysname, iv, fault, n, note, load1, busy, mexit, tdir, remark = sys.argv[1:]
t = json.loads(line) if line.strip().startswith("{") else {}
ok = not note and t.get("outcome") == "recovered" and t.get("ok_before_fault", 0) >= 50
if not note and t and t.get("outcome") != "recovered":
    note = "no recovery within the limit"
elif not note and t and t.get("ok_before_fault", 0) < 50:
    note = "too few successful probes before the fault"
if remark:
    note = (note + "; " if note else "") + remark
t.update(system=sysname, interval=iv, fault=fault, trial=int(n), note=note, ok=ok,
         load1=float(load1), busy_pct=None if busy == "null" else float(busy), master_exit=mexit, dir=tdir)
print(json.dumps(t))
PY
  local last
  last=$(tail -1 "$work/trials.jsonl")
  log "$(python3 "$here/failover.py" line "$last")"
}

# ------------------------------------------------------------------------------ run
t_start=$(date +%s)
systems_for() { # systems_for INTERVAL TRIAL -> the systems of that setting, order alternated
  local s=()
  if [ "$1" = "$RAMPART_DEFAULT" ]; then
    [ "$only" != keepalived ] && s=(rampart)
  elif [ "$only" = rampart ]; then s=(rampart)
  elif [ "$only" = keepalived ]; then s=(keepalived)
  elif [ $(($2 % 2)) -eq 1 ]; then s=(rampart keepalived)
  else s=(keepalived rampart); fi
  echo "${s[@]:-}"
}
total=0
for iv in "${INTERVALS[@]}"; do
  for t in $(seq 1 "$trials"); do
    for f in "${FAULTS[@]}"; do
      for sys in $(systems_for "$iv" "$t"); do total=$((total + 1)); done
    done
  done
done
[ "$total" -gt 0 ] || die "nothing to run"
log "$total trials (${INTERVALS[*]} x ${FAULTS[*]} x $trials)"
: >"$work/trials.jsonl"
k=0
for iv in "${INTERVALS[@]}"; do
  for t in $(seq 1 "$trials"); do
    for f in "${FAULTS[@]}"; do
      for sys in $(systems_for "$iv" "$t"); do
        k=$((k + 1))
        log "trial $k/$total: $sys, adverts every $iv, fault $f"
        trial "$sys" "$iv" "$f" "$k"
      done
    done
  done
done
elapsed=$(($(date +%s) - t_start))

# ------------------------------------------------------------------------------ report
systems="rampart,keepalived"
[ "$only" = rampart ] && systems=rampart
[ "$only" = keepalived ] && systems=keepalived
python3 - "$work/meta.json" <<PY
import json, sys, subprocess
def sh(c):
    return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip() or "?"
m = {
 "when": "$(date -u '+%Y-%m-%d %H:%M UTC')",
 "command": """${RAMPART_BIN:+RAMPART_BIN=$RAMPART_BIN }$cmdline""",
 "commit": """$commit""",
 "rampart_bin": "${rampart_bin:--}",
 "keepalived": sh("keepalived --version 2>&1 | head -1"),
 "nginx": sh("nginx -v 2>&1"),
 "cpus": $(nproc),
 "cpu_model": """$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')""",
 "kernel": "$(uname -r)",
 "trials": $trials,
 "intervals": "$intervals".split(","),
 "faults": "$faults".split(","),
 "systems": "$systems".split(","),
 "rampart_default": "$RAMPART_DEFAULT",
 "probe_rt": "${RT[*]:-}",
 "elapsed": "$((elapsed / 60)) min $((elapsed % 60)) s",
}
json.dump(m, open(sys.argv[1], "w"))
PY
out="$results/vrrp-failover-$stamp.md"
python3 "$here/failover.py" report --trials "$work/trials.jsonl" --meta "$work/meta.json" --out "$out"
log "report: $out (per-trial logs in $work$([ "$keep" = 1 ] && echo ", kept" || echo ", removed on exit: --keep keeps them"))"
