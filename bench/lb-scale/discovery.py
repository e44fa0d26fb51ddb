#!/usr/bin/env python3
"""Time for rampart lb to apply 10,000 servers discovered in etcd, and what traffic sees meanwhile.

Used by bench/lb-scale/run.sh (scenario `discovery`); standard library only.

  discovery.py register --etcd URL --cluster C --service S --n N --addr-port A,B [--batch 100]
      write N service records (as `rampart web` registers them) in transactions of `batch` puts,
      through etcd's JSON gateway; prints the wall time it took.
  discovery.py wait --admin URL --pool P --n N [--timeout 120]
      poll /api/state?limit=0 until pool P has N servers; prints the seconds waited, and the
      longest gap between two polls that answered (the admin API stays responsive).
  discovery.py wrkrow FILE
      requests, errors and max latency (ms) of a wrk --latency output, tab-separated.
"""

import argparse
import base64
import json
import re
import sys
import time
import urllib.request


def b64(s):
    return base64.b64encode(s.encode()).decode()


def addr(i):
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


def post(url, body, timeout=10):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def register(a):
    ports = [int(p) for p in a.addr_port.split(",")]
    prefix = f"/rampart/{a.cluster}/services/{a.service}/"
    t0 = time.monotonic()
    for start in range(0, a.n, a.batch):
        ops = []
        for i in range(start, min(a.n, start + a.batch)):
            name = f"d{i}"
            rec = {"name": name, "address": f"{addr(i)}:{ports[i % len(ports)]}", "weight": 1}
            ops.append({"requestPut": {"key": b64(prefix + name), "value": b64(json.dumps(rec))}})
        r = post(f"{a.etcd}/v3/kv/txn", {"success": ops})
        if "header" not in r:
            sys.exit(f"etcd refused the transaction: {r}")
    print(f"{time.monotonic() - t0:.3f}")


def wait(a):
    t0 = time.monotonic()
    last_ok = t0
    worst_gap = 0.0
    while True:
        now = time.monotonic()
        if now - t0 > a.timeout:
            sys.exit(f"pool {a.pool} did not reach {a.n} servers in {a.timeout} s")
        try:
            with urllib.request.urlopen(f"{a.admin}/api/state?limit=0", timeout=5) as r:
                st = json.load(r)
            now = time.monotonic()
            worst_gap = max(worst_gap, now - last_ok)
            last_ok = now
            pool = next((p for p in st["pools"] if p["name"] == a.pool), None)
            if pool and pool.get("servers_total", len(pool["servers"])) >= a.n:
                print(f"{now - t0:.3f} {worst_gap:.3f}")
                return
        except OSError:
            pass
        time.sleep(0.02)


def wrkrow(a):
    """requests, errors (socket + non-2xx), max latency in ms of a wrk --latency output."""
    t = open(a.file).read()
    req = re.search(r"(\d+) requests in", t)
    err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    mx = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", t, re.M)
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", mx.group(1)) if mx else None
    errors = (sum(map(int, err.groups())) if err else 0) + (int(non.group(1)) if non else 0)
    max_ms = float(m.group(1)) * unit[m.group(2)] if m else -1.0
    print(f"{req.group(1) if req else 0}\t{errors}\t{max_ms:.1f}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("register")
    p.add_argument("--etcd", required=True)
    p.add_argument("--cluster", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--addr-port", required=True)
    p.add_argument("--batch", type=int, default=100)
    p = sub.add_parser("wait")
    p.add_argument("--admin", required=True)
    p.add_argument("--pool", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--timeout", type=float, default=120)
    p = sub.add_parser("wrkrow")
    p.add_argument("file")
    a = ap.parse_args()
    {"register": register, "wait": wait, "wrkrow": wrkrow}[a.cmd](a)


if __name__ == "__main__":
    main()
