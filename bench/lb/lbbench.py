#!/usr/bin/env python3
"""Helpers for bench/lb/run.sh: process accounting, wrk parsing, the idle client, the report.

Standard library only (matplotlib is used for the optional plot when it is importable).

Subcommands
  freeport N                  print N free loopback TCP ports
  ticks PID...                utime+stime (clock ticks) summed over PID and all its descendants
  rss PID...                  VmRSS in bytes summed over PID and all its descendants
  pids PID...                 PID and all its descendants, one per line
  wrk FILE                    parse a wrk --latency output (and the status lines of status.lua) to JSON
  idle --port P --n N ...     hold N idle keep-alive connections (one GET each) until signalled
  report --dir D --out F ...  turn the TSV records of a run into the markdown report
"""

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import sys
import time

# --------------------------------------------------------------------------- processes


def _children_map():
    """ppid -> [pid] for every process visible in /proc."""
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read().decode("latin-1")
        except OSError:
            continue
        # comm may contain spaces and parentheses: fields after the last ')'.
        rest = data[data.rfind(")") + 2 :].split()
        ppid = int(rest[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(roots):
    kids = _children_map()
    seen, todo = [], list(roots)
    while todo:
        p = todo.pop()
        if p in seen or not os.path.exists(f"/proc/{p}"):
            continue
        seen.append(p)
        todo.extend(kids.get(p, []))
    return sorted(seen)


def ticks_of(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("latin-1")
    except OSError:
        return 0
    rest = data[data.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state); utime is field 14, stime field 15.
    return int(rest[11]) + int(rest[12])


def uticks_of(pid):
    """User-space clock ticks only (utime)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("latin-1")
    except OSError:
        return 0
    return int(data[data.rfind(")") + 2 :].split()[11])


def rss_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu0():
    """(busy, total) clock ticks of CPU 0 from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu0 "):
                v = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal ...
                busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
                return busy, busy + v[3] + v[4]
    raise RuntimeError("no cpu0 line in /proc/stat")


# --------------------------------------------------------------------------- wrk

_UNIT = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0, "m": 60_000_000.0}


def _dur_us(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"unparsable wrk duration {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_h2load(text, log=None):
    """h2load's summary (a fixed-rate run, `--rps`), in parse_wrk's terms. h2load prints no
    percentiles: p50_us and p99_us come from its per-request log (`--log-file`) when given,
    else they are None."""
    out = {
        "requests": None,
        "rps": None,
        "p50_us": None,
        "p99_us": None,
        "non2xx": 0,
        "sock_connect": 0,
        "sock_read": 0,
        "sock_write": 0,
        "sock_timeout": 0,
        "statuses": {},
    }
    m = re.search(r"^finished in [0-9.]+m?s, ([0-9.]+) req/s", text, re.M)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(
        r"^requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
        re.M,
    )
    if m:
        done, ok, failed, errored, timeout = map(int, m.groups())
        out["requests"] = done
        out["sock_read"] = errored
        out["sock_timeout"] = timeout
        out["sock_connect"] = failed - errored - timeout if failed > errored + timeout else 0
    m = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    if m:
        ok2, x3, x4, x5 = map(int, m.groups())
        out["non2xx"] = x3 + x4 + x5
        for code, n in (("2xx", ok2), ("3xx", x3), ("4xx", x4), ("5xx", x5)):
            if n:
                out["statuses"][code] = n
    out["sock_errors"] = out["sock_connect"] + out["sock_read"] + out["sock_write"] + out["sock_timeout"]
    if log and os.path.exists(log):
        # --log-file: start (us since the epoch), status, microseconds to the end of the response.
        lat = []
        with open(log) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3 and parts[1].strip().isdigit():
                    lat.append(float(parts[2]))
        if lat:
            lat.sort()
            out["p50_us"] = lat[min(len(lat) - 1, int(0.50 * len(lat)))]
            out["p99_us"] = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return out


def parse_wrk(text, log=None):
    if re.search(r"^finished in ", text, re.M) and re.search(r"^requests: ", text, re.M):
        return parse_h2load(text, log)
    out = {
        "requests": None,
        "rps": None,
        "p50_us": None,
        "p99_us": None,
        "non2xx": 0,
        "sock_connect": 0,
        "sock_read": 0,
        "sock_write": 0,
        "sock_timeout": 0,
        "statuses": {},
    }
    m = re.search(r"^\s*(\d+) requests in ", text, re.M)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    if m:
        out["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s*{pct}(?:\.000)?%\s+(\S+)", text, re.M)
        if m:
            out[key] = _dur_us(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["sock_connect"], out["sock_read"], out["sock_write"], out["sock_timeout"] = map(int, m.groups())
    # status.lua prints "status <code> <count>" lines in done().
    for code, n in re.findall(r"^status (\d+) (\d+)$", text, re.M):
        out["statuses"][code] = int(n)
    out["sock_errors"] = out["sock_connect"] + out["sock_read"] + out["sock_write"] + out["sock_timeout"]
    return out


# --------------------------------------------------------------------------- idle client


async def _idle(port, n, conc, hold, ready_file, host):
    req = f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rampart-bench-idle\r\n\r\n".encode()
    sem = asyncio.Semaphore(conc)
    conns = []
    failures = {"connect": 0, "response": 0}

    async def one():
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            except (OSError, asyncio.TimeoutError):
                failures["connect"] += 1
                return
            try:
                w.write(req)
                await w.drain()
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                status = head.split(b" ", 2)[1]
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if m:
                    await asyncio.wait_for(r.readexactly(int(m.group(1))), 10)
                if not status.startswith(b"2"):
                    raise ValueError(status)
                conns.append((r, w))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
                failures["response"] += 1
                w.close()

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    took = time.monotonic() - t0
    print(
        f"opened {len(conns)} of {n} in {took:.1f}s (connect failures {failures['connect']}, "
        f"response failures {failures['response']})",
        flush=True,
    )
    with open(ready_file + ".tmp", "w") as f:
        f.write(f"{len(conns)}\n")
    os.replace(ready_file + ".tmp", ready_file)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), hold)
    except asyncio.TimeoutError:
        pass
    # How many connections did the balancer keep open while we idled? A FIN or RST that arrived
    # meanwhile has already been fed to the reader by the event loop.
    await asyncio.sleep(0.2)
    alive = sum(
        1 for r, w in conns if not r.at_eof() and r.exception() is None and not w.is_closing()
    )
    print(f"alive {alive} of {len(conns)}", flush=True)
    with open(ready_file + ".alive", "w") as f:
        f.write(f"{alive}\n")
    for _, w in conns:
        w.close()


# --------------------------------------------------------------------------- report


def _read_tsv(path):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            vals = line.rstrip("\n").split("\t")
            rows.append(dict(zip(header, vals)))
    return rows


def _fmt(x, digits=1):
    if x is None:
        return "pending"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _ratio(x, base):
    if x is None or base in (None, 0):
        return "pending" if x is None else "-"
    return f"{x / base:.2f}"


def median_ci(vals, conf=0.95):
    """A distribution-free confidence interval of the median of `vals` (order statistics:
    the j-th and (n+1-j)-th values, j the largest with P(Binomial(n, 1/2) < j) <= (1-conf)/2).
    None when there are too few values for one (under 6 at 95 %)."""
    xs = sorted(vals)
    n = len(xs)
    tail = (1.0 - conf) / 2.0
    acc, j = 0.0, 0
    # P(B < j) for j = 1, 2, ...: the largest j with it within the tail.
    while True:
        nxt = acc + _binom(n, j) / 2.0**n
        if nxt > tail:
            break
        acc, j = nxt, j + 1
    if j == 0:
        return None
    return xs[j - 1], xs[n - j]


def _binom(n, k):
    out = 1
    for i in range(k):
        out = out * (n - i) // (i + 1)
    return out


def _cpu_section(args, meta, cols, rec, title, lines, plot_data):
    cpu = _read_tsv(os.path.join(args.dir, f"{rec}.tsv"))
    if cpu or rec in meta["scenarios"]:
        lines.append("")
        rate = int(meta.get("rate", 0) or 0)
        load = (
            f"`h2load --h1 -t1 -c50 --rps {rate // 50} -D {meta['duration']}` ({meta.get('h2load')}): "
            f"a fixed {rate:,} requests/s, percentiles from its per-request log"
            if rate
            else f"`wrk -t1 -c50 -d{meta['duration']}s --latency`"
        )
        lines.append(
            f"## Scenario {title}: {load}, {meta['rounds']} alternating rounds, medians"
        )
        lines.append("")
        med = {}
        for b in cols:
            rs = [r for r in cpu if r["balancer"] == b]
            if not rs:
                med[b] = None
                continue
            m = {}
            for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req"):
                m[k] = statistics.median(float(r[k]) for r in rs)
            m["errors"] = sum(int(r["errors"]) for r in rs)
            m["other"] = max(float(r["other_cpu0_pct"]) for r in rs)
            m["n"] = len(rs)
            users = [float(r["user_us_per_req"]) for r in rs if r.get("user_us_per_req")]
            m["user_us_per_req"] = statistics.median(users) if users else None
            m["cpu_min"] = min(float(r["cpu_us_per_req"]) for r in rs)
            m["cpu_max"] = max(float(r["cpu_us_per_req"]) for r in rs)
            med[b] = m
            plot_data.setdefault(rec, {})[b] = [float(r["cpu_us_per_req"]) for r in rs]
        base = med.get("haproxy")
        lines.append("| metric | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for key, label, digits in (
            ("rps", "requests/s", 0),
            ("p50_us", "p50 latency (us)", 0),
            ("p99_us", "p99 latency (us)", 0),
            ("cpu_us_per_req", "CPU per request (us)", 2),
        ):
            vals = [_fmt(med[b][key] if med[b] else None, digits) for b in cols]
            lines.append(f"| {label} | " + " | ".join(vals) + " |")
            if base:
                rat = [_ratio(med[b][key] if med[b] else None, base[key]) for b in cols]
                lines.append(f"| {label}, ratio to HAProxy | " + " | ".join(rat) + " |")
        if any(med[b] and med[b]["user_us_per_req"] is not None for b in cols):
            # The rest is kernel time: loopback TCP, charged to whoever sends.
            key, label = "user_us_per_req", "of which user space (us)"
            vals = [_fmt(med[b][key] if med[b] else None, 2) for b in cols]
            lines.append(f"| {label} | " + " | ".join(vals) + " |")
            if base and base.get(key):
                rat = [_ratio(med[b][key] if med[b] else None, base[key]) for b in cols]
                lines.append(f"| {label}, ratio to HAProxy | " + " | ".join(rat) + " |")
        vals = [
            f"{med[b]['cpu_min']:.2f}-{med[b]['cpu_max']:.2f}" if med[b] else "pending" for b in cols
        ]
        lines.append("| CPU per request, min-max over rounds (us) | " + " | ".join(vals) + " |")
        if base:
            # Each round runs every balancer back to back: a ratio within a round is taken
            # in one state of the host, which the medians above mix when it drifts.
            for key, label in (
                ("cpu_us_per_req", "CPU per request"),
                ("p99_us", "p99 latency"),
            ):
                ref = {r["round"]: float(r[key]) for r in cpu if r["balancer"] == "haproxy"}
                vals = []
                for b in cols:
                    rat = sorted(
                        float(r[key]) / ref[r["round"]]
                        for r in cpu
                        if r["balancer"] == b and ref.get(r["round"])
                    )
                    ci = median_ci(rat) if rat else None
                    vals.append(
                        f"{statistics.median(rat):.2f} [{rat[0]:.2f}-{rat[-1]:.2f}]"
                        + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci and b != "haproxy" else "")
                        if rat
                        else "pending"
                    )
                lines.append(
                    f"| {label}, ratio to HAProxy within each round: median [min-max] "
                    "(95% confidence interval of the median) | "
                    + " | ".join(vals)
                    + " |"
                )
        vals = [str(med[b]["errors"]) if med[b] else "pending" for b in cols]
        lines.append("| errors, all rounds (socket + non-2xx) | " + " | ".join(vals) + " |")
        vals = [f"{med[b]['other']:.1f}" if med[b] else "pending" for b in cols]
        lines.append(
            "| other load on CPU 0 during the runs, worst round (%) | " + " | ".join(vals) + " |"
        )


def report(args):
    balancers = args.balancers.split(",")
    pending = set(filter(None, args.pending.split(","))) if args.pending else set()
    cols = balancers + [b for b in sorted(pending) if b not in balancers]
    lines = []
    meta = json.load(open(os.path.join(args.dir, "meta.json")))
    lines.append(f"# Load balancer benchmark, {meta['when']}")
    lines.append("")
    lines.append(f"Command: `{meta['command']}`  ")
    lines.append(f"rampart commit: `{meta['rampart_commit']}`  ")
    lines.append(
        f"Machine: {meta['cpus']} CPUs ({meta['cpu_model']}), kernel {meta['kernel']}; "
        f"{meta['haproxy']}, {meta['nginx']}, {meta['wrk']}.  "
    )
    lines.append(
        "Each balancer runs ONE worker thread pinned to CPU 0; wrk and the two nginx backends "
        "run on CPU 1. Each balancer adds the same header to a request, X-Forwarded-For "
        "(HAProxy `option forwardfor`, nginx `proxy_set_header`, rampart "
        "`--forwarded-headers x-forwarded-for`). Ratios are to HAProxy (lower is better except "
        "requests/s)."
    )
    if pending:
        lines.append("")
        lines.append(f"Not measured in this run (column pending): {', '.join(sorted(pending))}.")
    plot_data = {}

    for rec, title in (
        ("cpu", "cpu"),
        ("tls", "tls (HTTPS terminated by the balancer, HTTP/1.1 keep-alive)"),
    ):
        _cpu_section(args, meta, cols, rec, title, lines, plot_data)

    kill = _read_tsv(os.path.join(args.dir, "kill.tsv"))
    if kill or "kill" in meta["scenarios"]:
        lines.append("")
        lines.append(
            "## Scenario kill: `wrk -t1 -c50 -d8s`, SIGKILL one of two backends 3 s in, "
            "health checks and retries on"
        )
        lines.append("")
        by = {r["balancer"]: r for r in kill}
        lines.append("| metric | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for key, label in (
            ("requests", "requests"),
            ("non2xx", "non-2xx responses"),
            ("sock_errors", "socket errors (connect/read/write/timeout)"),
            ("errors", "client errors, total"),
        ):
            vals = [by[b][key] if b in by else "pending" for b in cols]
            lines.append(f"| {label} | " + " | ".join(vals) + " |")
        vals = [by[b]["statuses"] if b in by else "pending" for b in cols]
        lines.append("| statuses seen | " + " | ".join(vals) + " |")

    idle = _read_tsv(os.path.join(args.dir, "idle.tsv"))
    if idle or "idle" in meta["scenarios"]:
        lines.append("")
        lines.append(
            f"## Scenario idle: {meta['idle_n']:,} idle keep-alive client connections "
            "(one GET each, then idle), RSS summed over the balancer's processes"
        )
        lines.append("")
        by = {r["balancer"]: r for r in idle}
        lines.append("| metric | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        lines.append(
            "| connections held (alive at the end) | "
            + " | ".join(f"{by[b]['held']} ({by[b]['alive']})" if b in by else "pending" for b in cols)
            + " |"
        )
        for key, label in (("rss_before", "RSS before (KiB)"), ("rss_after", "RSS after (KiB)")):
            vals = [f"{int(by[b][key]) // 1024:,}" if b in by else "pending" for b in cols]
            lines.append(f"| {label} | " + " | ".join(vals) + " |")
        per = {b: float(by[b]["bytes_per_conn"]) if b in by else None for b in cols}
        lines.append("| bytes per connection | " + " | ".join(_fmt(per[b], 0) for b in cols) + " |")
        if per.get("haproxy"):
            lines.append(
                "| bytes per connection, ratio to HAProxy | "
                + " | ".join(_ratio(per[b], per["haproxy"]) for b in cols)
                + " |"
            )
        plot_data["idle"] = {b: per[b] for b in cols if per[b] is not None}

    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    if args.plot:
        try:
            _plot(plot_data, args.plot)
        except Exception as e:  # the plot is a nicety; the table above is the result
            print(f"(no plot: {e})", file=sys.stderr)


def _plot(data, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)", file=sys.stderr)
        return
    panels = [k for k in ("cpu", "idle") if data.get(k)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key == "cpu":
            names = list(data["cpu"])
            ax.boxplot([data["cpu"][n] for n in names])
            ax.set_xticks(range(1, len(names) + 1), names)
            ax.set_title("CPU per request (us), all rounds")
        else:
            names = list(data["idle"])
            ax.bar(names, [data["idle"][n] for n in names])
            ax.set_title("bytes per idle connection")
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}", file=sys.stderr)


# --------------------------------------------------------------------------- side-by-side benches
# What the small Python benches (bench/lb-firewall, bench/lb-routes) share: loopback ports,
# processes in their own groups killed on exit, an nginx answering "ok".


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_http(port, timeout=10.0, host=None):
    """Whether http://127.0.0.1:PORT/ answers 200 within `timeout` seconds."""
    import urllib.request

    end = time.time() + timeout
    while time.time() < end:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/")
            if host:
                req.add_header("Host", host)
            with urllib.request.urlopen(req, timeout=1) as r:
                if r.status == 200:
                    return True
        except Exception:
            time.sleep(0.1)
    return False


class Procs:
    """Processes pinned to a CPU, each in its own session; `kill_all` ends every group."""

    def __init__(self, work):
        self.work = work
        self.procs = []

    def start(self, cpu, name, cmd):
        import subprocess

        log = open(os.path.join(self.work, f"{name}.log"), "w")
        p = subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=log, stderr=log,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        return p

    def kill_all(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                p.wait(timeout=5)
            except Exception:
                pass


def start_nginx_ok(procs, cpu, port):
    """An nginx (one worker, on `cpu`) answering every request with 200 "ok"."""
    import shutil

    d = os.path.join(procs.work, "nginx")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(f"""daemon off; master_process off; worker_processes 1;
error_log {d}/error.log; pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};
  fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{ listen 127.0.0.1:{port}; keepalive_requests 100000;
    location / {{ return 200 "ok\\n"; }} }} }}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs.start(cpu, "nginx", [nginx, "-c", os.path.join(d, "nginx.conf"), "-p", d])
    if not wait_http(port):
        raise SystemExit("nginx did not start")


def alternate(ports, pids, rounds, duration, headers=(), warmup=0):
    """Measure each balancer (name -> port, name -> pid) under wrk -t1 -c64 on CPU 1, in
    turns, the order rotated each round (`warmup` seconds of unmeasured load before each
    run). name -> {"us": [CPU us per request], "rps": [...], "errors": N}."""
    import subprocess

    hz = os.sysconf("SC_CLK_TCK")
    hdr = [a for h in headers for a in ("-H", h)]
    rec = {n: {"us": [], "rps": [], "errors": 0} for n in ports}
    order = list(ports)
    for r in range(rounds):
        for name in order:
            url = f"http://127.0.0.1:{ports[name]}/"
            if warmup:
                subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{warmup}s"] + hdr
                               + [url], capture_output=True, check=True)
            t0 = ticks_of(pids[name])
            out = subprocess.run(
                ["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{duration}s", "--latency"] + hdr
                + [url], capture_output=True, text=True, check=True).stdout
            ticks = ticks_of(pids[name]) - t0
            w = parse_wrk(out)
            rec[name]["us"].append(ticks / hz * 1e6 / (w["requests"] or 1))
            rec[name]["rps"].append(w["rps"] or 0)
            rec[name]["errors"] += (w["non2xx"] or 0) + sum(
                w[k] or 0 for k in ("sock_connect", "sock_read", "sock_write", "sock_timeout"))
            print(f"round {r + 1}/{rounds} {name}: {rec[name]['us'][-1]:.2f} us/request, "
                  f"{w['rps']:.0f} req/s", file=sys.stderr)
        order = order[1:] + order[:1]
    return rec


def report_header(title, command, repo):
    """The first lines of a side-by-side report: title with a timestamp, the command, the
    commit and the load average. (stamp, lines)."""
    import subprocess
    from datetime import datetime, timezone

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    load = open("/proc/loadavg").read().split()[:3]
    return stamp, [f"# {title} ({stamp})", "",
                   f"`{command}`, commit {commit}, load average at the end {' '.join(load)}."]


# --------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("freeport")
    p.add_argument("n", type=int)
    for name in ("ticks", "uticks", "rss", "pids"):
        p = sub.add_parser(name)
        p.add_argument("pids", type=int, nargs="+")
    p = sub.add_parser("wrk")
    p.add_argument("file")
    sub.add_parser("cpu0")
    p = sub.add_parser("quiet")
    p.add_argument("--threshold", type=float, default=10.0)
    p.add_argument("--max-wait", type=float, default=20.0)
    p = sub.add_parser("cpurow")
    for name in ("file", "balancer", "round", "t0", "t1", "hz", "cpu0_before", "cpu0_after"):
        p.add_argument(name)
    # Optional: user ticks before and after, for a user-space-only column at the end.
    p.add_argument("u0", nargs="?")
    p.add_argument("u1", nargs="?")
    p = sub.add_parser("killrow")
    p.add_argument("file")
    p.add_argument("balancer")
    p = sub.add_parser("idle")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--n", type=int, default=8000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--hold", type=float, default=60.0)
    p.add_argument("--ready-file", required=True)
    p = sub.add_parser("report")
    p.add_argument("--dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--balancers", required=True)
    p.add_argument("--pending", default="")
    p.add_argument("--plot", default="")
    a = ap.parse_args()

    if a.cmd == "freeport":
        socks, ports = [], []
        for _ in range(a.n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
        for s in socks:
            s.close()
        print(" ".join(map(str, ports)))
    elif a.cmd == "ticks":
        print(sum(ticks_of(p) for p in tree(a.pids)))
    elif a.cmd == "uticks":
        print(sum(uticks_of(p) for p in tree(a.pids)))
    elif a.cmd == "rss":
        print(sum(rss_of(p) for p in tree(a.pids)))
    elif a.cmd == "pids":
        print("\n".join(map(str, tree(a.pids))))
    elif a.cmd == "wrk":
        print(json.dumps(parse_wrk(open(a.file).read())))
    elif a.cmd == "cpu0":
        busy, total = _cpu0()
        print(f"{busy},{total}")
    elif a.cmd == "quiet":
        # Wait (bounded) until CPU 0, where only the idle balancers live, is free of other load.
        deadline = time.monotonic() + a.max_wait
        while True:
            b0, t0 = _cpu0()
            time.sleep(0.5)
            b1, t1 = _cpu0()
            busy = (b1 - b0) * 100.0 / max(1, t1 - t0)
            if busy < a.threshold:
                break
            if time.monotonic() > deadline:
                print(f"CPU 0 still {busy:.0f}% busy with other work after {a.max_wait:.0f}s", file=sys.stderr)
                break
    elif a.cmd == "cpurow":
        j = parse_wrk(open(a.file).read(), log=a.file + ".log")
        if not j["requests"]:
            sys.exit(f"wrk against {a.balancer} reported no requests (see {a.file})")
        cpu_us = (int(a.t1) - int(a.t0)) * 1e6 / int(a.hz) / j["requests"]
        err = j["non2xx"] + j["sock_errors"]
        # CPU 0 time not spent in the balancer during the run: other load that skews the result.
        b0, t0 = map(int, a.cpu0_before.split(","))
        b1, t1 = map(int, a.cpu0_after.split(","))
        bal = int(a.t1) - int(a.t0)
        other = max(0.0, ((b1 - b0) - bal) * 100.0 / max(1, t1 - t0))
        user = ""
        if a.u0 is not None and a.u1 is not None:
            user = f"\t{(int(a.u1) - int(a.u0)) * 1e6 / int(a.hz) / j['requests']:.3f}"
        print(
            f"{a.balancer}\t{a.round}\t{j['requests']}\t{j['rps']}\t{j['p50_us']}\t{j['p99_us']}"
            f"\t{cpu_us:.3f}\t{err}\t{other:.1f}{user}"
        )
    elif a.cmd == "killrow":
        j = parse_wrk(open(a.file).read())
        st = " ".join(f"{k}:{v}" for k, v in sorted(j["statuses"].items())) or "none"
        err = j["non2xx"] + j["sock_errors"]
        print(f"{a.balancer}\t{j['requests']}\t{j['non2xx']}\t{j['sock_errors']}\t{err}\t{st}")
    elif a.cmd == "idle":
        asyncio.run(_idle(a.port, a.n, a.concurrency, a.hold, a.ready_file, a.host))
    elif a.cmd == "report":
        report(a)


if __name__ == "__main__":
    main()
