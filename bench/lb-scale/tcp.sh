#!/usr/bin/env bash
# The kernel's side of issue 16's growth: what TCP does per request as the pool grows, for
# rampart and HAProxy side by side (bench/lb-scale/profile.sh, one run per cell, no callgrind).
# Per request: TCP segments on loopback, delayed ACKs (sent by the 40 ms timer, not carried by
# the next request), and the balancer's user and system CPU; and its open files after the run
# (upstream connections). When a server's next request comes more than the delayed-ACK time
# (40 ms) after its last response, the balancer's kernel sends that response's ACK alone, on a
# timer, instead of with the next request: how often depends on the order the algorithm visits
# the servers in and on the request rate, not on the algorithm's code.
#
#   bash bench/lb-scale/tcp.sh [--sizes 2,1000] [--algorithms round-robin,...]
#        [--rounds 3] [--bin target/release/rampart] [--out FILE]
#
# Rounds alternate the balancers' order; the report gives each cell's median. Loopback only;
# about 15 s a cell.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
sizes=2,1000
algos=round-robin,least-connections,source-ip-hash,random-two-choices,least-response-time
rounds=3
bin=$repo/target/release/rampart
out=
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) sizes=$2; shift 2 ;;
    --algorithms) algos=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$rounds" =~ ^[0-9]+$ && "$rounds" -ge 1 && "$rounds" -le 20 ]] || { echo "--rounds: 1..20" >&2; exit 2; }
[ -x "$bin" ] || { echo "no rampart binary at $bin" >&2; exit 2; }
stamp=$(date -u +%Y%m%dT%H%M%SZ)
[ -n "$out" ] || out=$repo/bench/results/lb-scale-tcp-$stamp.md
tsv=$(mktemp /tmp/rampart-lb-tcp.XXXXXX)
trap 'rm -f "$tsv"' EXIT
IFS=, read -r -a size_list <<<"$sizes"
IFS=, read -r -a algo_list <<<"$algos"
for ((r = 1; r <= rounds; r++)); do
  bals=(rampart haproxy)
  [ $((r % 2)) = 0 ] && bals=(haproxy rampart)
  for a in "${algo_list[@]}"; do
    for n in "${size_list[@]}"; do
      for b in "${bals[@]}"; do
        echo "[tcp $(date -u +%H:%M:%S)] round $r/$rounds: $a, $n servers, $b" >&2
        line=$(bash "$here/profile.sh" --servers "$n" --algorithm "$a" --balancer "$b" --bin "$bin" | tail -1)
        printf '%s\t%s\n' "$b" "$line" >>"$tsv"
      done
    done
  done
done
python3 - "$tsv" "$out" "$(git -C "$repo" rev-parse --short HEAD)" "$bin" "$rounds" "$(haproxy -v | head -1 | awk '{print $3}')" <<'P'
import sys, datetime, statistics
tsv, out, commit, binary, rounds, hv = sys.argv[1:]
cells = {}
order = []
for line in open(tsv):
    bal, *kv = line.rstrip("\n").split("\t")
    d = dict(x.split("=", 1) for x in kv)
    key = (d["algorithm"], int(d["servers"]), bal)
    if key not in cells:
        order.append(key)
    cells.setdefault(key, []).append(d)
med = lambda rows, k: statistics.median(float(r[k]) for r in rows)
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
o = [f"# What TCP does per request as the pool grows: rampart lb and HAProxy {hv}", "",
     f"{now}, repository at {commit}, rampart `{binary}`; {rounds} rounds, medians.", "",
     f"Command: `bash bench/lb-scale/tcp.sh --rounds {rounds} --bin {binary}`. Each cell is "
     "`bench/lb-scale/profile.sh` (one worker thread on CPU 0, wrk with 64 connections and two nginx "
     "on CPU 1, server i at its own loopback address, health checks off; 5 s warm-up, 5 s measured). "
     "Segments and delayed ACKs are system-wide counters (/proc/net/snmp, /proc/net/netstat) over "
     "the window, so they include the backends' and wrk's side of the same traffic.", "",
     "| algorithm | servers | balancer | req/s | user us/req | sys us/req | TCP segments/req | delayed ACKs/req | open files |",
     "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
for key in order:
    a, n, b = key
    rows = cells[key]
    rps = statistics.median(int(r["requests"]) for r in rows) / 5
    o.append(f"| {a} | {n:,} | {b} | {rps:,.0f} | {med(rows, 'user_us/req'):.2f} | "
             f"{med(rows, 'sys_us/req'):.2f} | {med(rows, 'tcp_segments/req'):.2f} | "
             f"{med(rows, 'delayed_acks/req'):.3f} | {med(rows, 'lb_fds'):,.0f} |")
o += ["", "source-ip-hash: wrk's connections all come from 127.0.0.1, so one server takes every "
      "request at any pool size (as in the timed bench): its row shows no growth for that reason."]
open(out, "w").write("\n".join(o) + "\n")
print(out)
P
