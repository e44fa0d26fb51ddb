#!/usr/bin/env python3
"""The markdown report of bench/lb-scale/run.sh from its cpu.tsv, mem.tsv and meta.json.

Standard library only. Medians per (pool size, algorithm, balancer); growth is relative to the
smallest pool size measured; ratio is rampart / HAProxy.
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lb"))
from lbbench import median_ci  # noqa: E402  (one definition of the interval, shared)

NAMES = {
    "rr": ("round-robin", "roundrobin"),
    "lc": ("least-connections", "leastconn"),
    "hash": ("source-ip-hash", "source, hash-type consistent"),
    "p2c": ("random-two-choices", "random(2)"),
    "lrt": ("least-response-time", "random(2)"),
}


def read_tsv(path):
    with open(path) as f:
        head = f.readline().rstrip("\n").split("\t")
        return [dict(zip(head, line.rstrip("\n").split("\t"))) for line in f if line.strip()]


def fmt(x, d=1):
    return "-" if x is None else f"{x:.{d}f}"


# The io-floor mode `--floor` runs beside each algorithm it has a counterpart for.
FLOOR_MODE = {"rr": "tokio-rr (round robin)", "p2c": "tokio-p2c (the less busy of two at random)"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    meta = json.load(open(f"{a.dir}/meta.json"))
    rows = read_tsv(f"{a.dir}/cpu.tsv")
    mem = read_tsv(f"{a.dir}/mem.tsv")

    cells = {}
    for r in rows:
        key = (int(r["size"]), r["algorithm"], r["balancer"])
        cells.setdefault(key, []).append(r)
    sizes = sorted({k[0] for k in cells})
    algos = [x for x in NAMES if any(k[1] == x for k in cells)]

    by_round = {
        (int(r["size"]), r["algorithm"], r["balancer"], r["round"]): float(r["cpu_us_per_req"])
        for r in rows
    }

    def within(pairs):
        """Median of per-round quotients with its 95 % interval (min-max when the rounds are
        too few for one); pairs: (numerator key, denominator key)."""
        qs = [by_round[a] / by_round[b] for a, b in pairs if by_round.get(a) and by_round.get(b)]
        if not qs:
            return "-"
        lo, hi = median_ci(qs) or (min(qs), max(qs))
        return f"{statistics.median(qs):.2f}x [{lo:.2f}-{hi:.2f}]"

    rounds_of = sorted({r["round"] for r in rows}, key=int)

    def med(n, algo, b, field="cpu_us_per_req"):
        rs = cells.get((n, algo, b))
        if not rs:
            return None
        return statistics.median(float(r[field]) for r in rs)

    out = []
    out.append("# rampart lb vs HAProxy as the pool grows: CPU per request, memory\n")
    out.append(
        f"{meta['when']}, rampart {meta['rampart_commit']}, {meta['haproxy']}, {meta['nginx']}, "
        f"{meta['wrk']}; {meta['cpu_model']}, {meta['cpus']} CPUs, Linux {meta['kernel']}.\n"
    )
    rate = int(meta.get("rate", 0) or 0)
    load = (
        f"h2load ({meta.get('h2load', 'h2load')}; 1 thread, 64 HTTP/1.1 connections) at a fixed "
        f"{rate:,} requests/s in the measured rounds (wrk for the warm-up)"
        if rate
        else "wrk (1 thread, 64 connections, closed loop)"
    )
    out.append(
        f"Command: `{meta['command']}`. One worker thread per balancer on CPU 0; {load} "
        f"and two nginx backends on CPU 1; servers are distinct loopback addresses "
        f"127.0.x.y (even ones on nginx 1, odd ones on nginx 2), health checks off; both add "
        f"X-Forwarded-For to each request and no other forwarding header. "
        f"All sizes of an algorithm run at once; each of {meta['rounds']} rounds measures every "
        f"size and both balancers, {meta['duration']} s each after 1 s of unmeasured load (the "
        f"balancers' order, and the sizes' from ascending to descending, swapped each round); "
        f"medians. Load average (1, 5, 15 min) before: {meta['load_before']}, after: "
        f"{meta['load_after']} (CPU 0's time outside the balancer "
        f"during each run is in the raw TSV, `other_cpu0_pct`).\n"
    )
    small = sizes[0]
    out.append("## CPU microseconds per request (balancer utime+stime / requests)\n")
    out.append(
        f"Growth is the median at N servers over the median at {small} servers; ratio is "
        "rampart / HAProxy at the same size. Goals of issue 16: rampart's growth from 2 to 1,000 "
        "servers under 1.10x for every algorithm, and at 1,000 servers at most 0.8x HAProxy. "
        "The second table of each algorithm gives the same quotients taken within each round "
        "(median over rounds [its 95 % confidence interval: order statistics, distribution-free; "
        "with 6 rounds it is the min-max]): the cells of a round run seconds apart, so the host's "
        "drift between its fast and slow states cancels out of them; a goal is met with "
        "confidence only when the whole interval meets it.\n"
    )
    for algo in algos:
        rn, hn = NAMES[algo]
        out.append(f"### {rn} (HAProxy: {hn})\n")
        if algo == "hash":
            out.append(
                "wrk connects from one address, so every request hashes to the same server: this "
                "measures the cost of the lookup, not the spread.\n"
            )
        out.append(
            "| servers | rampart us/req | HAProxy us/req | ratio | rampart growth | HAProxy growth "
            "| rampart req/s | HAProxy req/s | errors (r/h) |"
        )
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        r0, h0 = med(small, algo, "rampart"), med(small, algo, "haproxy")
        for n in sizes:
            r, h = med(n, algo, "rampart"), med(n, algo, "haproxy")
            rr, hr = med(n, algo, "rampart", "rps"), med(n, algo, "haproxy", "rps")
            er = sum(int(x["errors"]) for x in cells.get((n, algo, "rampart"), []))
            eh = sum(int(x["errors"]) for x in cells.get((n, algo, "haproxy"), []))
            ratio = r / h if r and h else None
            gr = r / r0 if r and r0 else None
            gh = h / h0 if h and h0 else None
            out.append(
                f"| {n:,} | {fmt(r, 2)} | {fmt(h, 2)} | {fmt(ratio, 2)}x | {fmt(gr, 2)}x | "
                f"{fmt(gh, 2)}x | {fmt(rr, 0)} | {fmt(hr, 0)} | {er}/{eh} |"
            )
        out.append("")
        out.append("| servers | ratio within rounds | rampart growth within rounds | HAProxy growth within rounds |")
        out.append("|---:|---:|---:|---:|")
        for n in sizes:
            ratio = within([((n, algo, "rampart", x), (n, algo, "haproxy", x)) for x in rounds_of])
            grow = {
                b: within([((n, algo, b, x), (small, algo, b, x)) for x in rounds_of])
                for b in ("rampart", "haproxy")
            }
            out.append(f"| {n:,} | {ratio} | {grow['rampart']} | {grow['haproxy']} |")
        out.append("")
        if any(k[1] == algo and k[2] == "floor" for k in cells):
            out.append(
                f"The floor (`--floor`: `bench/io-floor` {FLOOR_MODE.get(algo, '?')}, a proxy with no "
                "features choosing a server per request over each server's idle connections, on "
                "tokio's current-thread runtime as rampart), measured in the same rounds: what "
                "the kernel and the runtime cost at each size before any balancer feature does.\n"
            )
            out.append(
                "| servers | floor us/req | floor growth within rounds | floor / HAProxy within "
                "rounds | rampart / floor within rounds |"
            )
            out.append("|---:|---:|---:|---:|---:|")
            for n in sizes:
                f = med(n, algo, "floor")
                fg = within([((n, algo, "floor", x), (small, algo, "floor", x)) for x in rounds_of])
                fh = within([((n, algo, "floor", x), (n, algo, "haproxy", x)) for x in rounds_of])
                rf = within([((n, algo, "rampart", x), (n, algo, "floor", x)) for x in rounds_of])
                out.append(f"| {n:,} | {fmt(f, 2)} | {fg} | {fh} | {rf} |")
            out.append("")

    if any("user_us_per_req" in r and r["user_us_per_req"] for r in rows):
        out.append("## The same, user space only (balancer utime / requests)\n")
        out.append(
            "The rest of the CPU per request is kernel time: on loopback the receive side of every "
            "segment the balancer sends (into nginx's and wrk's sockets) runs in the balancer's "
            "context, and with more servers it touches more cold sockets. This table is the "
            "balancer's own code (parsing, selection, pools, TLS) and the allocator.\n"
        )
        out.append(
            "| algorithm | servers | rampart us/req | HAProxy us/req | ratio | rampart growth | "
            "HAProxy growth |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        f = "user_us_per_req"
        for algo in algos:
            r0, h0 = med(small, algo, "rampart", f), med(small, algo, "haproxy", f)
            for n in sizes:
                r, h = med(n, algo, "rampart", f), med(n, algo, "haproxy", f)
                ratio = r / h if r and h else None
                gr = r / r0 if r and r0 else None
                gh = h / h0 if h and h0 else None
                out.append(
                    f"| {NAMES[algo][0]} | {n:,} | {fmt(r, 2)} | {fmt(h, 2)} | {fmt(ratio, 2)}x | "
                    f"{fmt(gr, 2)}x | {fmt(gh, 2)}x |"
                )
        out.append("")

    out.append("## Resident memory of the balancer\n")
    out.append(
        "`start`: right after it answered its first request (config and pool state); `end`: after "
        "the last round (plus one idle upstream connection or more per server, and their buffers). "
        "MiB; `start s` is the time from exec to the first 200 through it.\n"
    )
    out.append("| servers | algorithm | rampart start | rampart end | HAProxy start | HAProxy end | rampart start s | HAProxy start s |")
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|")
    m = {(int(x["size"]), x["algorithm"], x["balancer"]): x for x in mem}
    for n in sizes:
        for algo in algos:
            r, h = m.get((n, algo, "rampart")), m.get((n, algo, "haproxy"))
            if not r or not h:
                continue
            mib = lambda v: f"{int(v) / 1048576:.1f}"
            out.append(
                f"| {n:,} | {NAMES[algo][0]} | {mib(r['rss_start'])} | {mib(r['rss_end'])} | "
                f"{mib(h['rss_start'])} | {mib(h['rss_end'])} | {r['start_s']} | {h['start_s']} |"
            )
    out.append("")
    disc = read_tsv(f"{a.dir}/discovery.tsv") if os.path.exists(f"{a.dir}/discovery.tsv") else []
    if disc:
        out.append("## Discovery: servers registered in etcd, applied under traffic\n")
        out.append(
            "A rampart pool with 2 static servers and `discovery` serves wrk (64 connections, 25 s, "
            "round robin) while N records are written to etcd in transactions of 100. `applied` is "
            "the time from the first write until `/api/state` shows every server (polled every "
            "20 ms; `admin gap` is the longest wait for an answer); errors and max latency are what "
            "wrk saw over the whole run; `cold start` is a fresh rampart, records already in etcd, "
            "from exec until its pool has them all.\n"
        )
        out.append("| records | writing them | applied | admin gap | wrk requests | errors | max latency | RSS before | RSS after | cold start |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for d in disc:
            out.append(
                f"| {int(d['servers']):,} | {float(d['register_s']):.2f} s | {float(d['applied_s']):.2f} s | "
                f"{float(d['admin_gap_s']) * 1000:.0f} ms | {int(d['requests']):,} | {d['errors']} | "
                f"{d['max_latency_ms']} ms | {int(d['rss_before']) / 1048576:.1f} MiB | "
                f"{int(d['rss_after']) / 1048576:.1f} MiB | {d['cold_start_s']} s |"
            )
        out.append("")
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
