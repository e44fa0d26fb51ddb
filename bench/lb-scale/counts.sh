#!/usr/bin/env bash
# Issue 16's growth counted instead of timed: instructions and data-cache misses per request
# of rampart lb's request path at each pool size, for every algorithm, under callgrind
# (bench/lb-scale/profile.sh --callgrind, one run per cell). Counts do not drift with the
# host as CPU time does (the timed bench's cells vary by +-20 % between rounds), so a change
# of a few cache lines per request shows here when the timed bench cannot resolve it.
#
#   bash bench/lb-scale/counts.sh [--sizes 2,1000] [--algorithms round-robin,...]
#        [--bin LABEL=PATH]... [--out FILE]
#
# --bin may be given more than once (e.g. before=/tmp/old after=target/release/rampart) to
# compare builds; the default is target/release/rampart. Writes a markdown report (default
# bench/results/lb-scale-counts-<UTC time>.md). Loopback only; about 40 s a cell.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
sizes=2,1000
algos=round-robin,least-connections,source-ip-hash,random-two-choices,least-response-time
bins=()
out=
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) sizes=$2; shift 2 ;;
    --algorithms) algos=$2; shift 2 ;;
    --bin) bins+=("$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#bins[@]} -gt 0 ] || bins=("rampart=$repo/target/release/rampart")
stamp=$(date -u +%Y%m%dT%H%M%SZ)
[ -n "$out" ] || out=$repo/bench/results/lb-scale-counts-$stamp.md
tsv=$(mktemp /tmp/rampart-lb-counts.XXXXXX)
trap 'rm -f "$tsv"' EXIT
IFS=, read -r -a size_list <<<"$sizes"
IFS=, read -r -a algo_list <<<"$algos"
for b in "${bins[@]}"; do
  label=${b%%=*}
  path=${b#*=}
  [ -x "$path" ] || { echo "no binary at $path ($b)" >&2; exit 2; }
done
for a in "${algo_list[@]}"; do
  for n in "${size_list[@]}"; do
    for b in "${bins[@]}"; do
      label=${b%%=*}
      path=${b#*=}
      echo "[counts $(date -u +%H:%M:%S)] $a, $n servers, $label" >&2
      line=$(bash "$here/profile.sh" --servers "$n" --algorithm "$a" --bin "$path" --callgrind | tail -1)
      prof=$(tr '\t' '\n' <<<"$line" | sed -n 's/^profile=//p')
      rm -rf "$(dirname "$prof")"
      printf '%s\t%s\t%s\t%s\n' "$a" "$n" "$label" "$line" >>"$tsv"
    done
  done
done
python3 - "$tsv" "$out" "$sizes" "$(git -C "$repo" rev-parse --short HEAD)" "$*" "${bins[@]}" <<'P'
import sys, datetime
tsv, out, sizes, commit, _args, *bins = sys.argv[1:]
sizes = [int(s) for s in sizes.split(",")]
labels = [b.split("=", 1)[0] for b in bins]
cells = {}
for line in open(tsv):
    a, n, label, *kv = line.rstrip("\n").split("\t")
    d = dict(x.split("=", 1) for x in kv if "=" in x)
    cells[(a, int(n), label)] = d
algos = list(dict.fromkeys(k[0] for k in cells))
small, big = sizes[0], sizes[-1]
f = lambda x: float(x)
lines = [
    "# rampart lb's request path as the pool grows, counted: instructions and cache misses per request",
    "",
    f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, repository at {commit}; "
    + ", ".join(f"`{b}`" for b in bins) + ".",
    "",
    "Command: `bash bench/lb-scale/counts.sh " + " ".join(f"--bin {b}" for b in bins)
    + " --sizes " + ",".join(map(str, sizes)) + "`. Each cell is one run of "
    "`bench/lb-scale/profile.sh --callgrind` (setup as the timed bench: one worker, wrk with 64 "
    "connections, servers at distinct loopback addresses, health checks off): callgrind counts "
    "only inside the client connections' tasks and only during a 5 s window after a 5 s warm-up, "
    "with a cache model of a 32 KiB D1 and a 512 KiB LL standing for the core's L2. Instructions "
    "per request are what the selection algorithms and per-server paths cost as code; LL misses "
    "per request are the per-server state that is out of the caches when its next request "
    "comes (each is about 0.1 us on this machine). Kernel time is not in these counts.",
    "",
    "| algorithm | build | " + " | ".join(f"Ir/req at {n:,}" for n in sizes) + f" | Ir growth {small:,} -> {big:,} | "
    + " | ".join(f"LL misses/req at {n:,}" for n in sizes) + " | D1 misses/req at " + f"{small:,} / {big:,} |",
    "|---|---|" + "---:|" * (2 * len(sizes) + 2),
]
for a in algos:
    for label in labels:
        row = [cells.get((a, n, label)) for n in sizes]
        if any(r is None for r in row):
            continue
        ir = [f(r["Ir/req"]) for r in row]
        ll = [f(r["LLmiss/req"]) for r in row]
        d1 = [f(r["D1miss/req"]) for r in row]
        lines.append(
            f"| {a} | {label} | " + " | ".join(f"{x:,.0f}" for x in ir)
            + f" | {ir[-1] / ir[0]:.3f}x | " + " | ".join(f"{x:.1f}" for x in ll)
            + f" | {d1[0]:.0f} / {d1[-1]:.0f} |"
        )
open(out, "w").write("\n".join(lines) + "\n")
print(out)
P
