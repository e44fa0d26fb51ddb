#!/usr/bin/env python3
"""What routing by Host and path costs: rampart lb and HAProxy, each with and without rules.

    RAMPART_BIN=<release rampart> python3 bench/lb-routes/bench.py [--rounds 6] [--duration 3] [--routes 50] [--guard]

Four balancers (one thread each, pinned to CPU 0) in front of one nginx (CPU 1); wrk
(64 connections, CPU 1, `Host: site.example`) alternates between them, order rotated each round,
each measured run after 1 s of unmeasured load:
  rampart-off   a listener and its pool, no routes;
  rampart-on    the same with N routes before it: route i takes host "app<i>.example" under
                "/p<i>/" to pool p<i>; none matches, so every request is compared with all N
                (the worst case) and goes to the listener's pool;
  haproxy-off   a frontend with default_backend;
  haproxy-on    the same N rules as `use_backend p<i> if { hdr(host) -i app<i>.example }
                { path_beg /p<i>/ }` (HAProxy's way to route; hdr(host) keeps the port, which
                wrk's Host does not carry).
--guard adds to both "on" balancers a guard on /admin/ for 10.0.0.0/8 (none of the requests is
under it): rampart's route with `allow` (which makes its listener match and forward paths in
normal form), HAProxy's `http-request deny if { path_beg /admin/ } !{ src 10.0.0.0/8 }` after
the four `http-request normalize-uri` actions of the same normal form.
Both add X-Forwarded-For only (equal work with HAProxy's `option forwardfor`). CPU
microseconds per request (utime+stime from /proc/PID/stat), medians; ratios on/off per
balancer and rampart/HAProxy per variant; a report in bench/results/lb-routes-<stamp>.md.
Loopback only; every process started here is killed on exit.
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "bench" / "lb"))
import lbbench  # noqa: E402

HOST = "site.example"


def rampart_conf(port, bport, n, guard=False):
    routes = "".join(
        f'[[listener.route]]\nhost = "app{i}.example"\npath_prefix = "/p{i}/"\npool = "p{i}"\n'
        for i in range(n)
    )
    if guard:
        routes += '[[listener.route]]\npath_prefix = "/admin/"\nallow = ["10.0.0.0/8"]\npool = "app"\n'
    pools = "".join(
        f'[[pool]]\nname = "p{i}"\nservers = [{{ name = "n1", address = "127.0.0.1:{bport}" }}]\n'
        f'health_check = {{ kind = "none" }}\n'
        for i in range(n)
    )
    return f"""[forwarded]
headers = ["x-forwarded-for"]

[[listener]]
name = "web"
address = "127.0.0.1:{port}"
pool = "app"
{routes}
[[pool]]
name = "app"
servers = [{{ name = "n1", address = "127.0.0.1:{bport}" }}]
health_check = {{ kind = "none" }}
{pools}"""


def haproxy_conf(port, bport, n, work, guard=False):
    rules = "".join(
        f"  use_backend p{i} if {{ hdr(host) -i app{i}.example }} {{ path_beg /p{i}/ }}\n"
        for i in range(n)
    )
    if guard:
        rules = (
            "  http-request normalize-uri path-merge-slashes\n"
            "  http-request normalize-uri path-strip-dotdot\n"
            "  http-request normalize-uri percent-decode-unreserved strict\n"
            "  http-request normalize-uri percent-to-uppercase strict\n"
            "  http-request deny if { path_beg /admin/ } !{ src 10.0.0.0/8 }\n"
        ) + rules
    backends = "".join(f"backend p{i}\n  server s1 127.0.0.1:{bport}\n" for i in range(n))
    # normalize-uri is an experimental directive in HAProxy 2.6.
    experimental = "\n  expose-experimental-directives" if guard else ""
    return f"""global
  nbthread 1
  maxconn 8900{experimental}
  pidfile {work}/haproxy-{n}.pid
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
  bind 127.0.0.1:{port}
  maxconn 8900
{rules}  default_backend app
backend app
  server s1 127.0.0.1:{bport}
{backends}"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--routes", type=int, default=50)
    ap.add_argument("--guard", action="store_true")
    args = ap.parse_args()
    if not (1 <= args.routes <= 1000 and 1 <= args.rounds <= 100 and 1 <= args.duration <= 60):
        sys.exit("--routes 1..1000, --rounds 1..100, --duration 1..60")
    rampart = os.environ.get("RAMPART_BIN") or str(REPO / "target/release/rampart")
    subprocess.run(["bash", str(REPO / "scripts/deps.sh")], check=True)
    for tool in ("wrk", "haproxy", "taskset"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is missing (bash scripts/deps.sh installs it)")
    if not Path(rampart).exists():
        sys.exit(f"{rampart} is missing: cargo build --release -p rampart, or set RAMPART_BIN")
    work = Path(tempfile.mkdtemp(prefix="rampart-bench-routes."))
    procs = lbbench.Procs(str(work))

    def cleanup(*_):
        procs.kill_all()
        shutil.rmtree(work, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *a: (cleanup(), sys.exit(143)))
    try:
        bport = lbbench.free_port()
        lbbench.start_nginx_ok(procs, 1, bport)
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        ports, pids = {}, {}
        for name in ("rampart-off", "rampart-on", "haproxy-off", "haproxy-on"):
            port = lbbench.free_port()
            n = args.routes if name.endswith("-on") else 0
            if name.startswith("rampart"):
                conf = work / f"{name}.toml"
                conf.write_text(rampart_conf(port, bport, n, args.guard and n > 0))
                cmd = ["env", "RUST_LOG=warn", rampart, "lb", "--config", str(conf), "--threads", "1"]
            else:
                conf = work / f"{name}.cfg"
                conf.write_text(haproxy_conf(port, bport, n, work, args.guard and n > 0))
                subprocess.run([haproxy, "-c", "-q", "-f", str(conf)], check=True)
                cmd = [haproxy, "-db", "-f", str(conf)]
            p = procs.start(0, name, cmd)
            ports[name], pids[name] = port, p.pid
            if not lbbench.wait_http(port, host=HOST):
                sys.exit(f"{name} did not serve:\n" + (work / f"{name}.log").read_text())
        rec = lbbench.alternate(ports, pids, args.rounds, args.duration,
                                headers=[f"Host: {HOST}"], warmup=1)
        med = {n: (statistics.median(v["us"]), statistics.median(v["rps"])) for n, v in rec.items()}
        hv = subprocess.run([haproxy, "-v"], capture_output=True, text=True).stdout.split()[2]
        stamp, lines = lbbench.report_header(
            "rampart lb and HAProxy: the cost of routing by Host and path",
            f"RAMPART_BIN=<release> python3 bench/lb-routes/bench.py --rounds {args.rounds}"
            f" --duration {args.duration} --routes {args.routes}{' --guard' if args.guard else ''}", REPO)
        lines += [
            f"HAProxy {hv}. One thread per balancer on CPU 0, wrk -t1 -c64 (`Host: site.example`) and one nginx on"
            f" CPU 1; alternating runs (each after 1 s unmeasured), medians. \"on\": {args.routes}"
            " host+path rules that none of the"
            " requests matches (each request is compared with all of them), then the default pool"
            + (", and a guard on /admin/ (rampart: a route with allow, paths in normal form; HAProxy:"
               " normalize-uri x4 and http-request deny)" if args.guard else "") + ".",
            "",
            "| balancer | CPU us/request | requests/s | errors | runs (us/request) |",
            "|---|---|---|---|---|",
        ]
        for n in ports:
            runs = ", ".join(f"{x:.2f}" for x in rec[n]["us"])
            lines.append(f"| {n} | {med[n][0]:.2f} | {med[n][1]:.0f} | {rec[n]['errors']} | {runs} |")
        r_on_off = med["rampart-on"][0] / med["rampart-off"][0]
        h_on_off = med["haproxy-on"][0] / med["haproxy-off"][0]
        lines += [
            "",
            f"- rampart, {args.routes} routes / none: **{r_on_off:.3f}x** CPU per request"
            f" ({(med['rampart-on'][0] - med['rampart-off'][0]) * 1000:.0f} ns a request)",
            f"- HAProxy, {args.routes} rules / none: **{h_on_off:.3f}x**"
            f" ({(med['haproxy-on'][0] - med['haproxy-off'][0]) * 1000:.0f} ns a request)",
            f"- rampart / HAProxy without rules: {med['rampart-off'][0] / med['haproxy-off'][0]:.3f}x,"
            f" with them: **{med['rampart-on'][0] / med['haproxy-on'][0]:.3f}x**",
            "",
        ]
        out = REPO / "bench" / "results" / f"lb-routes-{stamp}.md"
        out.write_text("\n".join(lines))
        print("\n".join(lines))
        print(f"report: {out}", file=sys.stderr)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
