#!/usr/bin/env python3
"""The L7 firewall's cost: rampart lb with and without a firewall, side by side.

    RAMPART_BIN=<release rampart> python3 bench/lb-firewall/bench.py [--rounds 6] [--duration 3]

Two rampart lb processes (one worker thread each, pinned to CPU 0) in front of one nginx
backend; wrk (64 connections, CPU 1) alternates between them, order rotated each round:
  off  the listener without a firewall;
  on   deny_file with 10,000 networks (none of them the client's), an allow list,
       a per-client rate limit (far above what wrk sends from its one address, so nothing
       is refused: the bucket is consulted on every request), a method list and max_body.
CPU microseconds per request (utime+stime from /proc/PID/stat) and requests/s; medians,
the ratio on/off, a report in bench/results/lb-firewall-<stamp>.md. Loopback only; every
process started here is killed on exit.
"""
import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "bench" / "lb"))
import lbbench  # noqa: E402  (ticks_of, parse_wrk, Procs, start_nginx_ok)



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=int, default=3)
    args = ap.parse_args()
    rampart = os.environ.get("RAMPART_BIN") or str(REPO / "target/release/rampart")
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is missing (bash scripts/deps.sh installs it)")
    if not Path(rampart).exists():
        sys.exit(f"{rampart} is missing: cargo build --release -p rampart, or set RAMPART_BIN")
    work = Path(tempfile.mkdtemp(prefix="rampart-bench-fw."))
    procs = lbbench.Procs(str(work))
    start = procs.start

    def cleanup(*_):
        procs.kill_all()
        shutil.rmtree(work, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *a: (cleanup(), sys.exit(143)))
    try:
        # The backend.
        bport = lbbench.free_port()
        lbbench.start_nginx_ok(procs, 1, bport)
        # The deny file: 10,000 networks in 10.0.0.0/8, none of them 127.0.0.1.
        deny = work / "deny.txt"
        deny.write_text("".join(f"10.{(i >> 8) & 255}.{i & 255}.0/24\n" for i in range(10_000)))
        variants = {
            "off": "",
            "on": (f'firewall = {{ deny_file = "{deny}", allow = ["127.0.0.0/8", "10.0.0.0/8"], '
                   'rate = "1000000/s", burst = 1000000, methods = ["GET", "HEAD", "POST"], '
                   'max_body = "10MB" }'),
        }
        ports = {}
        pids = {}
        for name, fw in variants.items():
            port = lbbench.free_port()
            conf = work / f"{name}.toml"
            conf.write_text(f"""[[listener]]
name = "web"
address = "127.0.0.1:{port}"
pool = "app"
{fw}

[[pool]]
name = "app"
servers = [{{ name = "n1", address = "127.0.0.1:{bport}" }}]
health_check = {{ kind = "none" }}
""")
            p = start(0, f"rampart-{name}", ["env", "RUST_LOG=warn", rampart, "lb", "--config", str(conf), "--threads", "1"])
            ports[name], pids[name] = port, p.pid
            if not lbbench.wait_http(port):
                sys.exit(f"rampart ({name}) did not serve:\n" + (work / f"rampart-{name}.log").read_text())
        rec = lbbench.alternate(ports, pids, args.rounds, args.duration)
        # The firewall refused nothing (it only looked).
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['on']}/", timeout=2) as resp:
            assert resp.status == 200
        med = {n: (statistics.median(v["us"]), statistics.median(v["rps"])) for n, v in rec.items()}
        ratio = med["on"][0] / med["off"][0]
        stamp, lines = lbbench.report_header(
            "rampart lb: the L7 firewall's cost",
            f"RAMPART_BIN=<release> python3 bench/lb-firewall/bench.py --rounds {args.rounds}"
            f" --duration {args.duration}", REPO)
        lines += [
            "One rampart lb worker thread on CPU 0 per variant, wrk -t1 -c64 on CPU 1 against one nginx;"
            " alternating runs, medians.",
            "",
            "| variant | CPU us/request | requests/s | runs (us/request) |",
            "|---|---|---|---|",
        ]
        for n in variants:
            runs = ", ".join(f"{x:.2f}" for x in rec[n]["us"])
            lines.append(f"| {n} | {med[n][0]:.2f} | {med[n][1]:.0f} | {runs} |")
        lines += [
            "",
            f"**on / off: {ratio:.3f}x CPU per request** (goal: under 1.1x). \"on\" = 10,000 deny networks"
            " from a file, an allow list, a per-client token bucket consulted on every request"
            " (set far above wrk's rate, so nothing is refused), a method list and max_body.",
            "",
        ]
        out = REPO / "bench" / "results" / f"lb-firewall-{stamp}.md"
        out.write_text("\n".join(lines))
        print("\n".join(lines))
        print(f"report: {out}", file=sys.stderr)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
