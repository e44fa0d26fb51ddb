#!/usr/bin/env python3
"""Driver of bench/web/run.sh (see there for the method). Loopback only."""
import argparse
import datetime
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

PROCS = []


def log(msg):
    print(f"[web-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(cmd, logfile, **kw):
    f = open(logfile, "ab")
    p = subprocess.Popen(cmd, stdout=f, stderr=f, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
    PROCS.append(p)
    return p


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()
    if p in PROCS:
        PROCS.remove(p)


def cleanup(*_):
    for p in list(PROCS):
        stop(p)


def wait_http(url, timeout=30, want=200):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == want:
                    return True
        except Exception:
            pass
        time.sleep(0.1)
    return False


def group_cpu_us(pgid):
    """utime+stime (microseconds) of every process in a process group."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total * 1_000_000 / tck


def parse_latency(s):
    m = re.match(r"([\d.]+)(us|ms|s)", s)
    v, u = float(m.group(1)), m.group(2)
    return v * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]


def wrk(url, duration, conns, cpu=None, script=None):
    cmd = []
    if cpu is not None:
        cmd += ["taskset", "-c", str(cpu)]
    cmd += ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency"]
    if script:
        cmd += ["-s", script]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = parse_latency(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = parse_latency(re.search(r"\s99%\s+(\S+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    nerr = sum(int(x) for x in errs.groups()) if errs else 0
    return {"rps": rps, "total": total, "p50": p50, "p99": p99,
            "non2xx": int(bad.group(1)) if bad else 0, "errors": nerr}


def other_load():
    """Fraction of CPU 0 busy over 0.5 s (anything else running on the machine)."""
    def snap():
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu0 "):
                    v = [int(x) for x in line.split()[1:]]
                    return sum(v), v[3] + v[4]
    t1, i1 = snap()
    time.sleep(0.5)
    t2, i2 = snap()
    return 1 - (i2 - i1) / max(1, t2 - t1)


def static_bench(args, rampart, work):
    site = os.path.join(work, "site")
    os.makedirs(site)
    with open(os.path.join(site, "1k.bin"), "wb") as f:
        f.write(os.urandom(1024))
    with open(os.path.join(site, "1m.bin"), "wb") as f:
        f.write(os.urandom(1024 * 1024))
    nginx_port, rampart_port = free_port(), free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  open_file_cache max=1000 inactive=60s;
  open_file_cache_valid 60s;
  default_type application/octet-stream;
  client_body_temp_path {work}; proxy_temp_path {work}; fastcgi_temp_path {work};
  uwsgi_temp_path {work}; scgi_temp_path {work};
  server {{ listen 127.0.0.1:{nginx_port} backlog=4096; root {site}; }}
}}
""")
    servers = {
        "nginx": ["taskset", "-c", "0", shutil.which("nginx") or "/usr/sbin/nginx", "-c", conf, "-p", work],
        "rampart": ["taskset", "-c", "0", rampart, "web", "--listen", f"127.0.0.1:{rampart_port}",
                    "--root", site, "--threads", "1", "--name", "bench"],
    }
    ports = {"nginx": nginx_port, "rampart": rampart_port}
    procs = {}
    for name, cmd in servers.items():
        procs[name] = start(cmd, os.path.join(work, f"{name}.log"))
        if not wait_http(f"http://127.0.0.1:{ports[name]}/1k.bin"):
            raise SystemExit(f"{name} did not start; see {work}/{name}.log")
    results = {}
    order = list(servers)
    for size in ["1k.bin", "1m.bin"]:
        for name in order:  # warm-up
            wrk(f"http://127.0.0.1:{ports[name]}/{size}", 1, 50, cpu=1)
        for r in range(args.rounds):
            rot = order[r % 2:] + order[:r % 2]
            for name in rot:
                busy = other_load()
                c0 = group_cpu_us(procs[name].pid)
                res = wrk(f"http://127.0.0.1:{ports[name]}/{size}", args.duration, 50, cpu=1)
                c1 = group_cpu_us(procs[name].pid)
                res["cpu_us"] = (c1 - c0) / max(1, res["total"])
                res["other_load"] = busy
                results.setdefault((size, name), []).append(res)
                log(f"{size} {name} round {r + 1}: {res['rps']:.0f} req/s p50 {res['p50']:.3f} ms "
                    f"p99 {res['p99']:.3f} ms cpu {res['cpu_us']:.1f} us/req (cpu0 busy before {busy:.0%})")
    for p in procs.values():
        stop(p)
    return results


def pg_user():
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres"}


def pg_bin():
    for v in ["17", "16", "15"]:
        d = f"/usr/lib/postgresql/{v}/bin"
        if os.path.exists(f"{d}/postgres"):
            return d
    raise SystemExit("PostgreSQL server binaries not found")


def guestbook_bench(args, rampart, work):
    pgdir = os.path.join(work, "pg")
    os.makedirs(pgdir)
    if os.geteuid() == 0:
        shutil.chown(work, "postgres", "postgres")
        shutil.chown(pgdir, "postgres", "postgres")
    b = pg_bin()
    prim, repl = os.path.join(pgdir, "primary"), os.path.join(pgdir, "replica")
    pport, rport = free_port(), free_port()
    subprocess.run([f"{b}/initdb", "-D", prim, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
                   check=True, capture_output=True, **pg_user())
    with open(os.path.join(prim, "postgresql.conf"), "a") as f:
        f.write("\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\nwal_level = replica\n"
                "max_wal_senders = 10\nhot_standby = on\nmax_connections = 200\nshared_buffers = 128MB\n")
    with open(os.path.join(prim, "pg_hba.conf"), "a") as f:
        f.write("\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n")
    start([f"{b}/postgres", "-D", prim, "-p", str(pport)], os.path.join(work, "pg-primary.log"), **pg_user())
    for _ in range(100):
        if subprocess.run([f"{b}/pg_isready", "-h", "127.0.0.1", "-p", str(pport)], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    subprocess.run([f"{b}/pg_basebackup", "-h", "127.0.0.1", "-p", str(pport), "-U", "postgres", "-D", repl,
                    "-R", "-X", "stream", "-c", "fast"], check=True, capture_output=True, **pg_user())
    start([f"{b}/postgres", "-D", repl, "-p", str(rport)], os.path.join(work, "pg-replica.log"), **pg_user())
    webs = []
    for i in (1, 2):
        port = free_port()
        start([rampart, "web", "--listen", f"127.0.0.1:{port}", "--root", work, "--name", f"web{i}",
               "--threads", "1", "--db-node", f"127.0.0.1:{pport}", "--db-node", f"127.0.0.1:{rport}"],
              os.path.join(work, f"web{i}.log"))
        webs.append(port)
    for port in webs:
        if not wait_http(f"http://127.0.0.1:{port}/readyz"):
            raise SystemExit(f"web node on {port} never ready; see {work}/web*.log")
    lb_port = free_port()
    cmd = [rampart, "lb", "--listen", f"127.0.0.1:{lb_port}", "--threads", "1", "--health-check", "http:/readyz"]
    for port in webs:
        cmd += ["--backend", f"127.0.0.1:{port}"]
    start(cmd, os.path.join(work, "lb.log"))
    if not wait_http(f"http://127.0.0.1:{lb_port}/healthz", timeout=30):
        raise SystemExit("lb did not answer")
    script = os.path.join(work, "post.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = \'{"author":"bench","text":"hello from wrk"}\'\n'
                'wrk.headers["Content-Type"] = "application/json"\n')
    base = f"http://127.0.0.1:{lb_port}/api/messages"
    # Seed so that reads return full pages.
    wrk(base, 2, 8, script=script)
    results = {}
    for r in range(args.gb_rounds):
        for kind in ["writes", "reads"]:
            if kind == "writes":
                res = wrk(base, args.duration, 32, script=script)
            else:
                res = wrk(base + "?limit=10", args.duration, 32)
            results.setdefault(kind, []).append(res)
            log(f"guestbook {kind} round {r + 1}: {res['rps']:.0f} req/s p50 {res['p50']:.2f} ms "
                f"p99 {res['p99']:.2f} ms non-2xx {res['non2xx']} errors {res['errors']}")
    return results


def med(rs, k):
    return statistics.median(r[k] for r in rs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--gb-rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--only", choices=["static", "guestbook"])
    args = ap.parse_args()
    if not (1 <= args.rounds <= 100 and 1 <= args.duration <= 60):
        raise SystemExit("--rounds 1..100, --duration 1..60")
    signal.signal(signal.SIGTERM, lambda *_: (cleanup(), sys.exit(1)))
    rampart = os.environ["RAMPART_BIN"]
    work = tempfile.mkdtemp(prefix="rampart-webbench-")
    os.chmod(work, 0o755)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    lines = [f"# rampart web benchmark {stamp} UTC", "",
             f"Command: `bash bench/web/run.sh {' '.join(sys.argv[3:])}`; machine: {os.cpu_count()} CPUs; "
             f"rampart {subprocess.run([rampart, '--version'], capture_output=True, text=True).stdout.strip()}; "
             f"{subprocess.run(['nginx', '-v'], capture_output=True, text=True).stderr.strip()}.", ""]
    try:
        if args.only in (None, "static"):
            sdir = os.path.join(work, "static")
            os.makedirs(sdir)
            res = static_bench(args, rampart, sdir)
            lines += [f"## Static files: one worker each on CPU 0, wrk -t1 -c50 on CPU 1, {args.rounds} alternating rounds of {args.duration} s (medians)", "",
                      "| file | server | req/s | p50 ms | p99 ms | CPU us/req | req/s vs nginx | CPU/req vs nginx |",
                      "|---|---|---|---|---|---|---|---|"]
            for size in ["1k.bin", "1m.bin"]:
                n = res[(size, "nginx")]
                for name in ["nginx", "rampart"]:
                    rs = res[(size, name)]
                    lines.append(f"| {size} | {name} | {med(rs, 'rps'):.0f} | {med(rs, 'p50'):.3f} | {med(rs, 'p99'):.3f} | "
                                 f"{med(rs, 'cpu_us'):.1f} | {med(rs, 'rps') / med(n, 'rps'):.2f} | "
                                 f"{med(rs, 'cpu_us') / med(n, 'cpu_us'):.2f} |")
            bad = sum(r["non2xx"] + r["errors"] for rs in res.values() for r in rs)
            lines += ["", f"Non-2xx answers and socket errors over all static runs: {bad}. "
                      f"Median busy share of CPU 0 from other processes before a run: "
                      f"{statistics.median(r['other_load'] for rs in res.values() for r in rs):.0%}.", ""]
        if args.only in (None, "guestbook"):
            os.makedirs(os.path.join(work, "gb"))
            res = guestbook_bench(args, rampart, os.path.join(work, "gb"))
            lines += [f"## Guestbook through rampart lb, two rampart web nodes (one thread each), PostgreSQL 15 primary + streaming replica, all on the same 2 CPUs; wrk -t1 -c32, {args.gb_rounds} rounds of {args.duration} s (medians)", "",
                      "| operation | req/s | p50 ms | p99 ms | non-2xx | socket errors |", "|---|---|---|---|---|---|"]
            for kind, label in [("writes", "POST /api/messages"), ("reads", "GET /api/messages?limit=10 (replica)")]:
                rs = res[kind]
                lines.append(f"| {label} | {med(rs, 'rps'):.0f} | {med(rs, 'p50'):.2f} | {med(rs, 'p99'):.2f} | "
                             f"{sum(r['non2xx'] for r in rs)} | {sum(r['errors'] for r in rs)} |")
            lines.append("")
    finally:
        cleanup()
    text = "\n".join(lines)
    outdir = os.path.join(args.repo, "bench", "results")
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, f"web-{stamp}.md")
    with open(path, "w") as f:
        f.write(text + "\n")
    print(text)
    log(f"written to {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
