#!/usr/bin/env python3
"""TLS handshake load and report for bench/tls/run.sh.

  tlsbench.py load PORT MODE SECS PROCS VERSION   -> one JSON line: handshakes, reused, secs
  tlsbench.py ticks PID                           -> utime+stime ticks of PID and its children
  tlsbench.py report DIR                          -> markdown report from DIR/rows.tsv

MODE is `full` (a new session every connection) or `resumed` (every connection offers the
session of a first one; TLS 1.3 tickets or TLS 1.2 tickets/session IDs). Each connection:
TCP connect, the TLS handshake, close. No HTTP request (the cost measured is the
handshake's), except the one connection that fetches the session to resume.
"""
import json
import multiprocessing as mp
import os
import socket
import ssl
import statistics
import sys
import time


def _ctx(version):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = v
    ctx.maximum_version = v
    return ctx


def _session(port, ctx):
    """A resumable session: one request read to its end, so TLS 1.3 tickets arrive."""
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            while s.recv(4096):
                pass
            return s.session


def _worker(port, mode, secs, version, q):
    ctx = _ctx(version)
    sess = _session(port, ctx) if mode == "resumed" else None
    n = reused = errors = 0
    end = time.monotonic() + secs
    while time.monotonic() < end:
        try:
            raw = socket.create_connection(("127.0.0.1", port))
            s = ctx.wrap_socket(raw, server_hostname="localhost", session=sess)
            n += 1
            reused += 1 if s.session_reused else 0
            s.close()
        except (OSError, ssl.SSLError):
            errors += 1
    q.put((n, reused, errors))


def load(port, mode, secs, procs, version):
    q = mp.Queue()
    ps = [mp.Process(target=_worker, args=(port, mode, secs, version, q)) for _ in range(procs)]
    t0 = time.monotonic()
    for p in ps:
        p.start()
    res = [q.get() for _ in ps]
    for p in ps:
        p.join()
    took = time.monotonic() - t0
    print(json.dumps({
        "handshakes": sum(r[0] for r in res),
        "reused": sum(r[1] for r in res),
        "errors": sum(r[2] for r in res),
        "secs": took,
    }))


def ticks(pid):
    """utime+stime of pid and every descendant (HAProxy -W is a master and a worker)."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                ppid = int(st[st.rindex(")") + 2:].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
            fields = st[st.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
        todo.extend(kids.get(p, []))
    print(total)


def report(d):
    rows = []
    with open(os.path.join(d, "rows.tsv")) as f:
        head = f.readline().rstrip("\n").split("\t")
        for line in f:
            rows.append(dict(zip(head, line.rstrip("\n").split("\t"))))
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    out = [
        f"# TLS handshakes: rampart lb vs HAProxy ({meta['date']})",
        "",
        f"Command: `{meta['cmd']}`  ",
        f"Machine: {meta['cpus']} CPUs ({meta['cpu_model']}), kernel {meta['kernel']}; "
        f"{meta['haproxy']}; {meta['openssl']}; rampart at {meta['rev']}.",
        "",
        "Method: each balancer runs one worker thread pinned to CPU 0 with the same ECDSA P-256 "
        "self-signed certificate; the client (Python's ssl, i.e. OpenSSL, "
        f"{meta['procs']} processes) runs on CPU 1 and makes connections that do the TLS "
        "handshake and close (no request). `full`: a new session each time; `resumed`: every "
        "connection offers the session of a first one (TLS 1.3: a ticket, PSK with (EC)DHE; "
        "TLS 1.2: a ticket). CPU per handshake = the balancer's utime+stime (all its "
        "processes, /proc/PID/stat) over the run divided by the handshakes completed. "
        f"{meta['rounds']} rounds of {meta['secs']} s each, balancers alternating; medians, "
        "min-max in brackets. Handshakes/s is bounded by the client on one CPU, so the CPU "
        "per handshake is the figure to compare.",
        "",
        "| TLS | kind | balancer | handshakes/s | CPU per handshake (us) | resumed | ratio to HAProxy (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["version"], r["mode"]) for r in rows}, key=lambda k: (k[0], k[1] != "full"))
    for version, mode in keys:
        med = {}
        for b in ("haproxy", "rampart"):
            rs = [r for r in rows if r["balancer"] == b and r["version"] == version and r["mode"] == mode]
            if not rs:
                continue
            cpu = [float(r["cpu_us"]) for r in rs]
            rate = [float(r["rate"]) for r in rs]
            reuse = [float(r["reused_frac"]) for r in rs]
            med[b] = (statistics.median(rate), statistics.median(cpu), min(cpu), max(cpu), statistics.median(reuse))
        for b, (rate, cpu, lo, hi, reuse) in med.items():
            ratio = f"{cpu / med['haproxy'][1]:.2f}x" if "haproxy" in med else "-"
            out.append(f"| {version} | {mode} | {b} | {rate:.0f} | {cpu:.0f} [{lo:.0f}-{hi:.0f}] | {reuse * 100:.0f} % | {ratio} |")
    out.append("")
    print("\n".join(out))


def main():
    cmd = sys.argv[1]
    if cmd == "load":
        load(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    elif cmd == "ticks":
        ticks(int(sys.argv[2]))
    elif cmd == "report":
        report(sys.argv[2])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
