#!/usr/bin/python3
"""Failover benchmark: write unavailability and lost acknowledged writes when the primary dies.

For each system (rampart db, Patroni 3 with etcd) and each lease setting, on a fresh 3-member
etcd and a fresh 3-node PostgreSQL 15 cluster on loopback:
  1. wait until the cluster is healthy (one /primary, two /replica; in --sync also a sync standby),
  2. create a table, start a bounded writer (one connection, ~200 inserts/s, increasing ids)
     that always writes through the node whose REST /primary answers 200,
  3. SIGKILL the primary's agent and its postgres (every pid of both) together,
  4. unavailability = kill -> first acknowledged insert on another node,
  5. after the new primary has been stable for STABLE_S, stop the writer and read back on the
     new primary: acknowledged ids missing = lost; ambiguous ids (the insert raised a
     connection error, so the commit may or may not have happened) found = ambiguous present,
  6. restart the killed node (it must rejoin as a replica) and go on with the next trial.
Prints a table and writes bench/results/db-failover-<ts>.md.

Runs as root: postgres refuses root, so Patroni (and its postgres) run as the `postgres` OS
user; rampart db is started as root and drops to `postgres` for PostgreSQL itself.
"""

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psycopg2

PG_BIN = "/usr/lib/postgresql/15/bin"
PASSWORD = "benchpw"
REPL_PASSWORD = "replpw"
STABLE_S = 3.0
WARMUP_S = 3.0
OUTAGE_LIMIT_S = 150.0
HEALTHY_LIMIT_S = 120.0
WRITE_PAUSE_S = 0.005  # bounded writer: at most ~200 inserts/s

# name -> (ttl, loop_wait, retry_timeout) in seconds; None = the system's own defaults.
SETTINGS = {
    "patroni-default": (30, 10, 10),
    "ttl10": (10, 2, 4),
    "fastest": (5, 1, 2),
    "rampart-default": None,
}

ALL_PROCS = []  # every Popen we started, killed at exit


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url, timeout=0.4):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except Exception:
        return None, b""


def spawn(argv, logpath, user=None, env=None):
    kw = {}
    if user:
        kw["user"] = user
        kw["group"] = user
        kw["extra_groups"] = []
    out = open(logpath, "ab")
    p = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True, env=env, **kw)
    out.close()
    ALL_PROCS.append(p)
    return p


# ---------------------------------------------------------------- process killing

def proc_table():
    """pid -> (ppid, cmdline)"""
    t = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            t[int(d)] = (ppid, cmd)
        except (OSError, IndexError, ValueError):
            continue
    return t


def node_pids(root_pid, data_dir):
    """The agent, all its descendants, every process naming data_dir (the postmaster's -D),
    and all their descendants."""
    t = proc_table()
    seeds = set()
    if root_pid and root_pid in t:
        seeds.add(root_pid)
    for pid, (_, cmd) in t.items():
        if data_dir and data_dir in cmd:
            seeds.add(pid)
    children = {}
    for pid, (ppid, _) in t.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], list(seeds)
    seen = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def kill_pids(pids):
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- other load

CLK_TCK = os.sysconf("SC_CLK_TCK")


class LoadMonitor(threading.Thread):
    """CPU used by processes that are NOT this benchmark (not descendants of this python),
    sampled every second: the machine is shared, so each row says how busy the rest was.
    Short-lived processes are counted from their start if they started after the previous
    sample (a process living less than a sample interval is missed)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.other_cpu_s = 0.0
        self.t0 = time.monotonic()
        self.load1 = []
        self.boot = time.time() - float(open("/proc/uptime").read().split()[0])

    @staticmethod
    def sample():
        """pid -> (ppid, start ticks, cpu ticks)"""
        out = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                out[int(d)] = (int(rest[1]), int(rest[19]), int(rest[11]) + int(rest[12]))
            except (OSError, IndexError, ValueError):
                continue
        return out

    def run(self):
        me = os.getpid()
        prev = self.sample()
        prev_t = time.time()
        while not self.stop_ev.wait(1.0):
            cur = self.sample()
            now = time.time()
            ours = {me}
            changed = True
            while changed:  # descendants of this python (the systems under test)
                changed = False
                for pid, (ppid, _, _) in cur.items():
                    if ppid in ours and pid not in ours:
                        ours.add(pid)
                        changed = True
            ticks = 0
            for pid, (_, start, cpu) in cur.items():
                if pid in ours:
                    continue
                if pid in prev and prev[pid][1] == start:
                    ticks += max(0, cpu - prev[pid][2])
                elif self.boot + start / CLK_TCK >= prev_t - 0.01:
                    ticks += cpu  # started since the last sample
            with self.lock:
                self.other_cpu_s += ticks / CLK_TCK
                self.load1.append(float(open("/proc/loadavg").read().split()[0]))
            prev, prev_t = cur, now

    def snapshot(self):
        with self.lock:
            return self.other_cpu_s, time.monotonic(), list(self.load1)


LOAD = None


# ---------------------------------------------------------------- etcd

class Etcd:
    def __init__(self, base, n=3):
        self.dir = os.path.join(base, "etcd")
        os.makedirs(self.dir)
        self.members = [(f"e{i}", free_port(), free_port()) for i in range(n)]
        initial = ",".join(f"{m}=http://127.0.0.1:{pp}" for m, _, pp in self.members)
        self.procs = []
        for name, cp, pp in self.members:
            argv = ["etcd", "--name", name, "--data-dir", os.path.join(self.dir, name),
                    "--listen-client-urls", f"http://127.0.0.1:{cp}",
                    "--advertise-client-urls", f"http://127.0.0.1:{cp}",
                    "--listen-peer-urls", f"http://127.0.0.1:{pp}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", os.path.basename(base),
                    "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]
            self.procs.append(spawn(argv, os.path.join(self.dir, f"{name}.log")))
        deadline = time.time() + 30
        while time.time() < deadline:
            if all(b'"health":"true"' in http_status(f"{u}/health", 1)[1].replace(b" ", b"")
                   for u in self.urls()):
                return
            time.sleep(0.2)
        raise RuntimeError(f"etcd did not become healthy; logs in {self.dir}")

    def urls(self):
        return [f"http://127.0.0.1:{cp}" for _, cp, _ in self.members]

    def stop(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


# ---------------------------------------------------------------- systems

class Node:
    def __init__(self, name, base):
        self.name = name
        self.pg_port = free_port()
        self.api_port = free_port()
        self.dir = os.path.join(base, name)
        self.proc = None

    def api(self, path):
        return f"http://127.0.0.1:{self.api_port}{path}"


def pg_connect(node, timeout=3):
    c = psycopg2.connect(host="127.0.0.1", port=node.pg_port, user="postgres", password=PASSWORD,
                         dbname="postgres", connect_timeout=timeout)
    c.autocommit = True
    return c


def streaming_replicas(primary, at_lsn=None, max_lag=1024 * 1024):
    """Standbys streaming from `primary` that replayed `at_lsn` (or lag < max_lag bytes)."""
    try:
        c = pg_connect(primary, 2)
    except psycopg2.Error:
        return 0
    try:
        with c.cursor() as cur:
            if at_lsn is None:
                cur.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' "
                            "AND pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) < %s", (max_lag,))
            else:
                cur.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' "
                            "AND replay_lsn >= %s::pg_lsn", (at_lsn,))
            return cur.fetchone()[0]
    except psycopg2.Error:
        return 0
    finally:
        c.close()


TS_RE = re.compile(r"(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)[.,](\d+)")


def log_events(path, after_wall, patterns):
    """Seconds after `after_wall` of the first line matching each pattern (UTC timestamps)."""
    out = {}
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return out
    for line in lines:
        m = TS_RE.search(line)
        if not m:
            continue
        frac = float("0." + m.group(3))
        t = dt.datetime.strptime(f"{m.group(1)} {m.group(2)}", "%Y-%m-%d %H:%M:%S").replace(
            tzinfo=dt.timezone.utc).timestamp() + frac
        if t < after_wall:
            continue
        for key, pat in patterns.items():
            if key not in out and pat in line:
                out[key] = t - after_wall
    return out


class System:
    """Common interface: start(node), data_dir(node), kill(node), cluster checks."""
    kind = "?"

    def __init__(self, base, etcd, setting, sync):
        self.base = base
        self.etcd = etcd
        self.setting = setting
        self.sync = sync
        self.nodes = [Node(f"db{i + 1}", base) for i in range(3)]

    def start_all(self):
        for n in self.nodes:
            self.start(n)

    def find_primary(self):
        for n in self.nodes:
            if http_status(n.api("/primary"), 0.3)[0] == 200:
                return n
        return None

    def healthy(self):
        prim = [n for n in self.nodes if http_status(n.api("/primary"), 0.5)[0] == 200]
        repl = [n for n in self.nodes if http_status(n.api("/replica"), 0.5)[0] == 200]
        if len(prim) != 1 or len(repl) != 2:
            return False
        # "/replica 200" only says postgres runs in recovery: also require both standbys
        # to stream from the primary and be caught up, or a failover could promote a
        # replica that never received the trial's table.
        if streaming_replicas(prim[0]) < 2:
            return False
        return not self.sync or self.has_sync_standby(prim[0])

    def kill(self, node):
        pids = node_pids(node.proc.pid if node.proc else None, self.data_dir(node))
        kill_pids(pids)
        if node.proc:
            node.proc.wait()
        node.proc = None
        return pids

    def stop_all(self):
        for n in self.nodes:
            kill_pids(node_pids(n.proc.pid if n.proc else None, self.data_dir(n)))
            if n.proc:
                n.proc.wait()
            n.proc = None


class Patroni(System):
    kind = "patroni"

    def __init__(self, *a):
        super().__init__(*a)
        os.chmod(self.base, 0o755)
        ttl, loop_wait, retry = self.setting
        for n in self.nodes:
            os.makedirs(n.dir, mode=0o700)
            cfg = {
                "scope": "bench", "namespace": "/patroni-bench/", "name": n.name,
                "log": {"level": "INFO"},
                "restapi": {"listen": f"127.0.0.1:{n.api_port}",
                            "connect_address": f"127.0.0.1:{n.api_port}"},
                "etcd3": {"hosts": [u.replace("http://", "") for u in self.etcd.urls()],
                          "protocol": "http"},
                "bootstrap": {
                    "dcs": {
                        "ttl": ttl, "loop_wait": loop_wait, "retry_timeout": retry,
                        "maximum_lag_on_failover": 16 * 1024 * 1024,
                        "synchronous_mode": bool(self.sync),
                        "postgresql": {
                            "use_pg_rewind": True, "use_slots": True,
                            "remove_data_directory_on_rewind_failure": True,
                            "remove_data_directory_on_diverged_timelines": True,
                            "parameters": {"wal_log_hints": "on", "max_wal_senders": 10,
                                           "max_replication_slots": 10,
                                           "wal_keep_size": "128MB"},
                        },
                    },
                    "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}],
                },
                "postgresql": {
                    "listen": f"127.0.0.1:{n.pg_port}",
                    "connect_address": f"127.0.0.1:{n.pg_port}",
                    "data_dir": self.data_dir(n),
                    "bin_dir": PG_BIN,
                    "pgpass": os.path.join(n.dir, "pgpass"),
                    "authentication": {
                        "superuser": {"username": "postgres", "password": PASSWORD},
                        "replication": {"username": "replicator", "password": REPL_PASSWORD},
                        "rewind": {"username": "postgres", "password": PASSWORD},
                    },
                    "parameters": {"unix_socket_directories": n.dir},
                    "pg_hba": ["local all all trust",
                               "host all all 127.0.0.1/32 md5",
                               "host replication replicator 127.0.0.1/32 md5"],
                },
            }
            with open(os.path.join(n.dir, "patroni.yml"), "w") as f:
                json.dump(cfg, f, indent=1)  # JSON is YAML
        subprocess.run(["chown", "-R", "postgres:postgres", self.base], check=True)

    def data_dir(self, n):
        return os.path.join(n.dir, "data")

    def start(self, n):
        env = {"PATH": f"{PG_BIN}:/usr/bin:/bin", "HOME": "/var/lib/postgresql", "TZ": "UTC",
               "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        n.proc = spawn(["/usr/bin/patroni", os.path.join(n.dir, "patroni.yml")],
                       os.path.join(n.dir, "patroni.log"), user="postgres", env=env)

    def leader_events(self, n, after_wall):
        # Patroni logs local time; the bench runs with TZ=UTC (see main()).
        return log_events(os.path.join(n.dir, "patroni.log"), after_wall,
                          {"key": "promoted self to leader by acquiring session lock"})

    def has_sync_standby(self, prim):
        st, body = http_status(prim.api("/cluster"), 1)
        if st != 200:
            return False
        try:
            return any(m.get("role") == "sync_standby" and m.get("state") in ("running", "streaming")
                       for m in json.loads(body).get("members", []))
        except ValueError:
            return False


def rampart_bin():
    if os.environ.get("RAMPART_BIN"):
        return os.environ["RAMPART_BIN"]
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    tdir = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    for prof in ("release", "debug"):
        p = os.path.join(tdir, prof, "rampart")
        if os.path.exists(p):
            return p
    raise RuntimeError("rampart binary not found: set RAMPART_BIN or build it (cargo build --release -p rampart)")


class Rampart(System):
    kind = "rampart"

    def __init__(self, *a):
        super().__init__(*a)
        self.bin = rampart_bin()
        os.chmod(self.base, 0o755)
        self.data_base = os.path.join(self.base, "rampart")
        os.makedirs(self.data_base)
        lines = ["[cluster]", 'name = "bench"',
                 "etcd = [" + ", ".join(f'"{u}"' for u in self.etcd.urls()) + "]", "",
                 "[db]", f'data_dir = "{self.data_base}"',
                 f"synchronous = {'true' if self.sync else 'false'}",
                 f'superuser_password = "{PASSWORD}"',
                 f'replication_password = "{REPL_PASSWORD}"']
        if self.setting is not None:
            ttl, loop_wait, retry = self.setting
            lines += [f'ttl = "{ttl}s"', f'loop_wait = "{loop_wait}s"', f'retry_timeout = "{retry}s"']
        for n in self.nodes:
            os.makedirs(n.dir, exist_ok=True)
            lines += ["", "[[db.nodes]]", f'name = "{n.name}"', 'host = "127.0.0.1"',
                      f"port = {n.pg_port}", f'api = "127.0.0.1:{n.api_port}"']
        self.topology = os.path.join(self.base, "topology.toml")
        with open(self.topology, "w") as f:
            f.write("\n".join(lines) + "\n")

    def data_dir(self, n):
        return os.path.join(self.data_base, n.name)

    def start(self, n):
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        n.proc = spawn([self.bin, "db", "--config", self.topology, "--node", n.name],
                       os.path.join(n.dir, "agent.log"), env=env)

    def leader_events(self, n, after_wall):
        return log_events(os.path.join(n.dir, "agent.log"), after_wall,
                          {"key": "took the leader key", "promoted": "promoted to primary"})

    def has_sync_standby(self, prim):
        st, body = http_status(prim.api("/cluster"), 1)
        if st != 200:
            return False
        try:
            return any(m.get("sync_standby") for m in json.loads(body).get("members", []))
        except ValueError:
            return False


# ---------------------------------------------------------------- the writer

class Writer(threading.Thread):
    def __init__(self, system, table, first_id):
        super().__init__(daemon=True)
        self.system = system
        self.table = table
        self.next_id = first_id
        self.acked = []      # (id, t_monotonic, node name)
        self.ambiguous = []  # commit raised a connection error: outcome unknown
        self.failed = []     # definite errors (e.g. read-only): not committed
        self.found = []      # (t_monotonic, node name): /primary answered 200 on a (re)connect
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()

    def connect(self, node):
        c = psycopg2.connect(host="127.0.0.1", port=node.pg_port, user="postgres",
                             password=PASSWORD, dbname="postgres", connect_timeout=2,
                             keepalives=1, keepalives_idle=1, keepalives_interval=1,
                             keepalives_count=2, tcp_user_timeout=3000,
                             application_name="failover-bench")
        c.autocommit = True
        return c

    def run(self):
        conn, node = None, None
        while not self.stop_ev.is_set():
            if conn is None:
                node = self.system.find_primary()
                if node is None:
                    time.sleep(0.05)
                    continue
                with self.lock:
                    self.found.append((time.monotonic(), node.name))
                try:
                    conn = self.connect(node)
                except psycopg2.Error:
                    conn = None
                    time.sleep(0.05)
                    continue
            i = self.next_id
            self.next_id += 1
            try:
                del conn.notices[:]
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {self.table}(id) VALUES (%s)", (i,))
                t = time.monotonic()
                # A cancelled synchronous-replication wait returns success with a WARNING:
                # committed locally but not confirmed by the standby. Not an acknowledgement.
                if any("synchronous replication" in n for n in conn.notices):
                    with self.lock:
                        self.ambiguous.append(i)
                else:
                    with self.lock:
                        self.acked.append((i, t, node.name))
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                with self.lock:
                    self.ambiguous.append(i)
                try:
                    conn.close()
                except psycopg2.Error:
                    pass
                conn = None
            except psycopg2.Error:
                with self.lock:
                    self.failed.append(i)
                try:
                    conn.close()
                except psycopg2.Error:
                    pass
                conn = None
            time.sleep(WRITE_PAUSE_S)
        if conn is not None:
            conn.close()

    def acks_after(self, t, exclude):
        with self.lock:
            return [a for a in self.acked if a[1] > t and a[2] != exclude]


def wait_healthy(system, limit):
    t0 = time.time()
    while time.time() - t0 < limit:
        if system.healthy():
            return time.time() - t0
        time.sleep(0.5)
    raise RuntimeError(f"{system.kind}: cluster not healthy after {limit:.0f}s; logs under {system.base}")


def run_trial(system, trial, first_id):
    table = f"bench_t{trial}"
    prim = system.find_primary()
    c = pg_connect(prim)
    with c.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {table}(id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        cur.execute("SELECT pg_current_wal_lsn()::text")
        lsn = cur.fetchone()[0]
    c.close()
    t0 = time.time()
    while streaming_replicas(prim, at_lsn=lsn) < 2:
        if time.time() - t0 > 30:
            raise RuntimeError(f"the trial table did not reach both standbys in 30s ({system.base})")
        time.sleep(0.1)
    w = Writer(system, table, first_id)
    w.start()
    time.sleep(WARMUP_S)
    victim = system.find_primary()
    if victim is None or not w.acks_after(time.monotonic() - 1.0, None):
        w.stop_ev.set()
        w.join(10)
        raise RuntimeError("writer is not writing before the kill")
    t_kill = time.monotonic()
    t_kill_wall = time.time()
    pids = system.kill(victim)
    log(f"  trial {trial}: killed {victim.name} ({len(pids)} pids)")
    unavail = None
    while time.monotonic() - t_kill < OUTAGE_LIMIT_S:
        acks = w.acks_after(t_kill, victim.name)
        if acks:
            unavail = acks[0][1] - t_kill
            new_primary = acks[0][2]
            break
        time.sleep(0.02)
    if unavail is None:
        w.stop_ev.set()
        w.join(10)
        return {"trial": trial, "victim": victim.name, "unavail": None, "lost": None,
                "amb_present": None, "amb_total": len(w.ambiguous), "new_primary": None}
    # Stable: writes keep being acknowledged by the same node for STABLE_S.
    t_first = time.monotonic()
    while time.monotonic() - t_first < STABLE_S * 4:
        time.sleep(STABLE_S)
        recent = w.acks_after(time.monotonic() - STABLE_S, victim.name)
        if recent and all(a[2] == recent[0][2] for a in recent):
            new_primary = recent[0][2]
            break
    w.stop_ev.set()
    w.join(15)
    node = next(n for n in system.nodes if n.name == new_primary)
    ids_acked = [a[0] for a in w.acked]
    c = pg_connect(node)
    with c.cursor() as cur:
        cur.execute(f"SELECT id FROM {table}")
        present = {r[0] for r in cur.fetchall()}
    c.close()
    lost = sorted(set(ids_acked) - present)
    amb_present = sorted(set(w.ambiguous) & present)
    failed_present = sorted(set(w.failed) & present)
    # Where the time went: leader key taken and promotion done (the new leader's log),
    # /primary first seen 200 by the writer.
    events = system.leader_events(node, t_kill_wall)
    seen = next((t - t_kill for t, n in w.found if t > t_kill and n != victim.name), None)
    res = {"trial": trial, "victim": victim.name, "new_primary": new_primary,
           "key_s": events.get("key"), "promoted_s": events.get("promoted"), "seen_s": seen,
           "unavail": unavail, "lost": len(lost), "lost_ids": lost[:20],
           "amb_present": len(amb_present), "amb_total": len(w.ambiguous),
           "failed_present": len(failed_present), "acked": len(ids_acked)}
    log(f"  trial {trial}: key taken {fmt_s(events.get('key'))}s, promoted {fmt_s(events.get('promoted'))}s, "
        f"/primary seen {fmt_s(seen)}s after the kill")
    log(f"  trial {trial}: {victim.name} -> {new_primary}: unavailable {unavail:.2f}s, "
        f"lost {len(lost)}, ambiguous present {len(amb_present)}/{len(w.ambiguous)}, acked {len(ids_acked)}")
    # The killed node comes back and must rejoin before the next trial.
    system.start(victim)
    return res


def run_setting(kind, setting_name, trials, sync, base_root):
    setting = SETTINGS[setting_name]
    base = tempfile.mkdtemp(prefix=f"{kind}-{setting_name}-", dir=base_root)
    etcd = Etcd(base)
    cls = Patroni if kind == "patroni" else Rampart
    system = cls(base, etcd, setting, sync)
    results, error = [], None
    load0 = LOAD.snapshot() if LOAD else None
    try:
        system.start_all()
        took = wait_healthy(system, HEALTHY_LIMIT_S)
        log(f"{kind} {setting_name}: healthy after {took:.1f}s")
        first_id = 1
        for t in range(1, trials + 1):
            wait_healthy(system, HEALTHY_LIMIT_S)
            r = run_trial(system, t, first_id)
            first_id += 10_000_000
            results.append(r)
            if r["unavail"] is None:
                raise RuntimeError(f"trial {t}: no acknowledged write on another node within "
                                   f"{OUTAGE_LIMIT_S:.0f}s of the kill")
    except Exception as e:  # keep the trials done so far; the report says what broke
        error = str(e)
        log(f"!! {kind} {setting_name}: {error}")
    finally:
        system.stop_all()
        etcd.stop()
        if load0 and LOAD:
            cpu1, t1, loads = LOAD.snapshot()
            other = (cpu1 - load0[0]) / max(1e-6, t1 - load0[1])
            la = loads[len(load0[2]):]
            for r in results:
                r["other_cores"] = round(other, 2)
                r["load1"] = round(statistics.mean(la), 2) if la else None
    return results, base, error


def fmt_s(x):
    return "-" if x is None else f"{x:.2f}"


def summarize(kind, setting_name, sync, results):
    ok = [r for r in results if r["unavail"] is not None]
    un = [r["unavail"] for r in ok]
    lost = [r["lost"] for r in ok]
    ambp = sum(r["amb_present"] for r in ok)
    ambt = sum(r["amb_total"] for r in ok)
    s = SETTINGS[setting_name]
    lease = "own defaults" if s is None else f"{s[0]}/{s[1]}/{s[2]}"
    def med(k):
        v = [r[k] for r in ok if r.get(k) is not None]
        return statistics.median(v) if v else None
    return {
        "key": med("key_s"), "promoted": med("promoted_s"), "seen": med("seen_s"),
        "other": next((r.get("other_cores") for r in results if r.get("other_cores") is not None), None),
        "load1": next((r.get("load1") for r in results if r.get("load1") is not None), None),
        "system": kind, "setting": setting_name, "lease": lease,
        "mode": "sync" if sync else "async", "trials": len(results), "ok": len(ok),
        "median": statistics.median(un) if un else None,
        "min": min(un) if un else None, "max": max(un) if un else None,
        "lost_total": sum(lost), "lost_trials": sum(1 for x in lost if x > 0),
        "amb_present": ambp, "amb_total": ambt,
    }


def table(rows):
    head = ("| system | setting | lease ttl/loop/retry (s) | mode | trials ok | "
            "unavailability median (min-max) s | key taken / promoted / /primary seen, median s | "
            "lost acked (trials with loss) | ambiguous present/total | other load (cores) / load avg |")
    sep = "|---|---|---|---|---|---|---|---|---|---|"
    out = [head, sep]
    for r in rows:
        out.append(f"| {r['system']} | {r['setting']} | {r['lease']} | {r['mode']} | {r['ok']}/{r['trials']} | "
                   f"{fmt_s(r['median'])} ({fmt_s(r['min'])}-{fmt_s(r['max'])}) | "
                   f"{fmt_s(r.get('key'))} / {fmt_s(r.get('promoted'))} / {fmt_s(r.get('seen'))} | "
                   f"{r['lost_total']} ({r['lost_trials']}) | {r['amb_present']}/{r['amb_total']} | "
                   f"{fmt_s(r.get('other'))} / {fmt_s(r.get('load1'))} |")
    notes = [f"- {r['system']} {r['setting']}: stopped early: {r['error']}" for r in rows if r.get("error")]
    return "\n".join(out + ([""] + notes if notes else []))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--system", choices=["rampart", "patroni", "both"], default="both")
    ap.add_argument("--sync", action="store_true", help="synchronous replication mode")
    ap.add_argument("--settings", default="",
                    help="comma list of " + ",".join(SETTINGS) +
                    " (default: patroni-default,ttl10,fastest; plus rampart-default for rampart)")
    ap.add_argument("--out", default=os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results")))
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (logs)")
    a = ap.parse_args()
    # Ctrl-C / SIGTERM still run the cleanup below (no stray postgres, patroni or etcd).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        sys.exit("run as root (postgres and patroni are started as the postgres user)")

    os.environ["TZ"] = "UTC"  # Patroni's log timestamps are local time
    time.tzset()
    global LOAD
    LOAD = LoadMonitor()
    LOAD.start()
    systems = ["patroni", "rampart"] if a.system == "both" else [a.system]
    base_root = tempfile.mkdtemp(prefix="rampart-dbbench-")
    os.chmod(base_root, 0o755)
    ts = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    rows, raw = [], {}
    try:
        names = [x for x in a.settings.split(",") if x] or ["patroni-default", "ttl10", "fastest", "rampart-default"]
        for name in names:
            if name not in SETTINGS:
                sys.exit(f"unknown setting {name}")
            # Alternate the systems within one setting, so both see the same machine state.
            for kind in systems:
                if SETTINGS[name] is None and kind == "patroni":
                    continue  # Patroni's own defaults are the patroni-default row
                log(f"== {kind} {name} ({'sync' if a.sync else 'async'}), {a.trials} trials")
                try:
                    res, _, error = run_setting(kind, name, a.trials, a.sync, base_root)
                except Exception as e:  # a broken system still lets the other one report
                    res, error = [], str(e)
                    log(f"!! {kind} {name} failed: {e}")
                raw[f"{kind}/{name}"] = {"trials": res, "error": error}
                row = summarize(kind, name, a.sync, res)
                row["error"] = error
                rows.append(row)
                print(table(rows[-1:]), flush=True)
    finally:
        for p in ALL_PROCS:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        kill_pids(node_pids(None, base_root))
        if not a.keep:
            shutil.rmtree(base_root, ignore_errors=True)
        else:
            log(f"logs kept under {base_root}")

    out = table(rows)
    print("\n" + out)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"db-failover-{ts}.md")
    with open(path, "w") as f:
        f.write(f"# db failover benchmark {ts}\n\n")
        f.write(f"Command: `bash bench/db-failover/run.sh --trials {a.trials} --system {a.system}"
                f"{' --sync' if a.sync else ''}{' --settings ' + a.settings if a.settings else ''}`\n\n")
        f.write("3-member etcd 3.4 (default raft timings), 3 PostgreSQL 15 nodes on loopback, one writer "
                "(autocommit INSERTs of increasing ids, <= 200/s) through the node whose REST /primary is 200. "
                "Kill = SIGKILL of the primary's agent and all its postgres processes together. "
                "Unavailability = kill -> first acknowledged insert on another node. Lost = acknowledged ids "
                "missing on the new primary once stable. Ambiguous = the insert raised a connection error "
                "(outcome unknown); 'present' ones were in fact committed. Key taken / promoted: from the new "
                "leader's log (Patroni logs one line when it took the key and started promoting); /primary seen: "
                "the writer found the new primary. Other load: CPU used by processes outside this benchmark "
                "during the row, in cores (the machine has " + str(os.cpu_count()) + "), and the 1-min load "
                "average (everything).\n\n")
        f.write(out + "\n\n## Per trial\n\n```json\n" + json.dumps(raw, indent=1) + "\n```\n")
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
