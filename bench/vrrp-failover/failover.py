#!/usr/bin/env python3
"""Client probe and report of bench/vrrp-failover/run.sh.

  failover.py probe --vip IP --out TRIAL.json --fault-at 2 --fault-cmd CMD
                    --backup-ns NS --master-ns NS --interval-ms N [--limit S]
      Runs inside the client's network namespace. Starts an HTTP GET to http://VIP/ every
      10 ms (a new connection each, 200 ms timeout for the whole exchange; probes overlap,
      so a probe hanging on a dead address does not delay the next one). At --fault-at
      seconds it runs --fault-cmd (a shell command, from a thread, so the probing goes on).
      It watches the virtual IP come and go on both balancer hosts (`ip -n NS monitor
      address`). It stops once, after the fault, the backup holds the VIP, at least
      3 adverts + 1.5 s have passed and the last second of probes all succeeded (or at
      --limit seconds after the fault). Writes the trial as JSON: every probe, the gap (the
      longest time between the starts of two successful probes), the failed probes.

  failover.py report --trials TRIALS.jsonl --meta META.json --out REPORT.md
      The markdown report: a table per fault (median (min-max) gap, failed probes, trials
      ok, rampart/keepalived ratio per interval) and every trial.
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time

PERIOD = 0.010
TIMEOUT = 0.200


# ------------------------------------------------------------------------------ probe
class Watch(threading.Thread):
    """`ip -n NS monitor address`: when the VIP is added to / deleted from the host."""

    def __init__(self, ns, vip):
        super().__init__(daemon=True)
        self.vip = vip
        self.events = []  # (monotonic, "add"|"del")
        self.proc = subprocess.Popen(
            ["ip", "-n", ns, "monitor", "address"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def run(self):
        for line in self.proc.stdout:
            if f"inet {self.vip}/" in line:
                self.events.append(
                    (time.monotonic(), "del" if line.startswith("Deleted") else "add")
                )

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def one_probe(vip, rec):
    req = f"GET / HTTP/1.1\r\nHost: {vip}\r\nConnection: close\r\n\r\n".encode()
    w = None

    async def exchange():
        nonlocal w
        r, w = await asyncio.open_connection(vip, 80)
        w.write(req)
        await w.drain()
        data = b""
        while True:
            chunk = await r.read(4096)
            if not chunk:
                break
            data += chunk
        return data

    try:
        data = await asyncio.wait_for(exchange(), TIMEOUT)
        ok = data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.0 200")
        rec[2] = "ok" if ok else "status " + data[:12].decode("latin1", "replace")
        rec[1] = ok
    except asyncio.TimeoutError:
        rec[2] = "timeout"
    except ConnectionRefusedError:
        rec[2] = "refused"
    except OSError as e:
        rec[2] = type(e).__name__
    except Exception as e:  # noqa: BLE001 - any failure is a failed probe
        rec[2] = type(e).__name__
    finally:
        rec[3] = time.monotonic()
        if w is not None:
            w.close()


async def probe_main(a):
    t0 = time.monotonic()
    fault_at = t0 + a.fault_at
    interval = a.interval_ms / 1000.0
    min_after = 3 * interval + 1.5
    hard_end = fault_at + a.limit
    master = Watch(a.master_ns, a.vip)
    backup = Watch(a.backup_ns, a.vip)
    master.start()
    backup.start()
    probes = []  # [start, ok, why, end]
    tasks = set()
    fault = {}

    def do_fault():
        fault["t"] = time.monotonic()
        p = subprocess.run(a.fault_cmd, shell=True, capture_output=True, text=True)
        fault["done"] = time.monotonic()
        fault["rc"] = p.returncode
        fault["err"] = (p.stderr or "").strip()[-300:]

    fault_thread = threading.Thread(target=do_fault, daemon=True)
    k = 0
    outcome = "limit"
    while True:
        now = time.monotonic()
        if not fault_thread.is_alive() and "t" not in fault and now >= fault_at:
            fault_thread.start()
        if "t" in fault:
            since = now - fault["t"]
            taken = any(e[1] == "add" and e[0] >= fault["t"] for e in backup.events)
            # The probes started in the second before the last timeout's worth (all of
            # them have finished by now).
            last_s = [p for p in probes if now - 1.0 - TIMEOUT <= p[0] < now - TIMEOUT - PERIOD]
            if (
                since >= min_after
                and taken
                and len(last_s) >= 50
                and all(p[3] is not None and p[1] for p in last_s)
            ):
                outcome = "recovered"
                break
            if now >= hard_end:
                break
        rec = [now, False, None, None]
        probes.append(rec)
        t = asyncio.ensure_future(one_probe(a.vip, rec))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        k += 1
        nxt = t0 + k * PERIOD
        delay = nxt - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            # Late (a busy machine): skip the missed slots rather than bursting.
            k = int((time.monotonic() - t0) / PERIOD) + 1
            await asyncio.sleep(0)
    if tasks:
        await asyncio.wait(tasks, timeout=TIMEOUT + 0.5)
    end = time.monotonic()
    if fault_thread.is_alive():
        fault_thread.join(5)
    master.stop()
    backup.stop()
    master.join(1)
    backup.join(1)

    ft = fault.get("t")
    done = [p for p in probes if p[3] is not None]
    okt = [p[0] for p in done if p[1]]
    gap, gap_from, gap_to = 0.0, None, None
    for x, y in zip(okt, okt[1:]):
        if y - x > gap:
            gap, gap_from, gap_to = y - x, x, y
    failed = [p for p in done if not p[1]]
    rel = lambda t: None if t is None or ft is None else round((t - ft) * 1000, 1)  # noqa: E731
    first = lambda evs, kind: next(  # noqa: E731
        (e[0] for e in evs if e[1] == kind and ft is not None and e[0] >= ft), None
    )
    why = {}
    for p in failed:
        why[p[2]] = why.get(p[2], 0) + 1
    ok_before = sum(1 for p in done if p[1] and ft is not None and p[0] < ft)
    res = {
        "probes": len(done),
        "unfinished": len(probes) - len(done),
        "failed": len(failed),
        "failed_why": why,
        "ok_before_fault": ok_before,
        "gap_ms": round(gap * 1000, 1),
        "gap_from_ms": rel(gap_from),
        "gap_to_ms": rel(gap_to),
        "first_fail_ms": rel(failed[0][0]) if failed else None,
        "last_fail_ms": rel(failed[-1][0]) if failed else None,
        "vip_added_backup_ms": rel(first(backup.events, "add")),
        "vip_deleted_master_ms": rel(first(master.events, "del")),
        "fault_cmd_ms": None if ft is None else round((fault["done"] - ft) * 1000, 1),
        "fault_rc": fault.get("rc"),
        "fault_err": fault.get("err"),
        "outcome": outcome,
        "after_fault_s": None if ft is None else round(end - ft, 2),
        "max_probe_start_lag_ms": round(
            max((y[0] - x[0] for x, y in zip(probes, probes[1:])), default=0) * 1000, 1
        ),
        "probes_detail": [
            [round((p[0] - (ft or t0)) * 1000, 1), int(p[1]), p[2],
             None if p[3] is None else round((p[3] - p[0]) * 1000, 1)]
            for p in probes
        ],
    }
    with open(a.out, "w") as f:
        json.dump(res, f)
    summary = {k: v for k, v in res.items() if k != "probes_detail"}
    print(json.dumps(summary))
    return 0


# ------------------------------------------------------------------------------ report
def fmt_ms(v):
    return f"{v:,.0f}"


def row_stats(trials):
    ok = [t for t in trials if t.get("ok")]
    if not ok:
        return None
    gaps = [t["gap_ms"] for t in ok]
    fails = [t["failed"] for t in ok]
    # From the fault command's completion (its own start-up is not part of the failover).
    take = [t["vip_added_backup_ms"] - (t.get("fault_cmd_ms") or 0)
            for t in ok if t.get("vip_added_backup_ms") is not None]
    return {
        "gap_med": statistics.median(gaps),
        "gap_min": min(gaps),
        "gap_max": max(gaps),
        "fail_med": statistics.median(fails),
        "fail_min": min(fails),
        "fail_max": max(fails),
        "take_med": statistics.median(take) if take else None,
        "n_ok": len(ok),
        "load": statistics.median([t["load1"] for t in ok]),
        "busy": statistics.median([t["busy_pct"] for t in ok if t.get("busy_pct") is not None] or [0]),
    }


FAULT_TITLE = {
    "link": "Link down (the master's bridge port taken down)",
    "kill": "SIGKILL of the master",
    "stop": "Clean stop of the master (SIGTERM)",
}


def summary(trials, meta):
    """A factual paragraph: the goals at rampart's defaults, then the ratios per interval."""
    def st(sys_, iv, f):
        rows = [t for t in trials if t["system"] == sys_ and t["interval"] == iv and t["fault"] == f]
        return row_stats(rows) if rows else None

    parts = []
    d = meta.get("rampart_default")
    if d in meta["intervals"] and "rampart" in meta["systems"]:
        hard = []
        for f in ("link", "kill"):
            x = st("rampart", d, f)
            if x:
                hard.append(
                    f"{f} {fmt_ms(x['gap_med'])} ms median (max {fmt_ms(x['gap_max'])} ms)"
                )
        ok_hard = all(
            (st("rampart", d, f) or {}).get("gap_max", 1e9) < 300
            for f in ("link", "kill") if f in meta["faults"]
        )
        med_hard = all(
            (st("rampart", d, f) or {}).get("gap_med", 1e9) < 300
            for f in ("link", "kill") if f in meta["faults"]
        )
        if hard:
            verdict = (
                "met in every trial" if ok_hard
                else "met by the median but not in every trial" if med_hard
                else "NOT met"
            )
            parts.append(
                f"With rampart's defaults ({d} adverts) a hard failure cost the client "
                + ", ".join(hard) + f": the goal (under 300 ms) is {verdict}."
            )
        x = st("rampart", d, "stop")
        if x:
            rows = [t for t in trials if t["system"] == "rampart" and t["interval"] == d
                    and t["fault"] == "stop" and t.get("ok")]
            lossless = sum(1 for t in rows if t["failed"] == 0)
            parts.append(
                f"A clean stop lost no probe in {lossless} of {len(rows)} trials "
                f"(failed probes median {x['fail_med']:g}, max {x['fail_max']}; longest gap median "
                f"{fmt_ms(x['gap_med'])} ms, max {fmt_ms(x['gap_max'])} ms): the goal (no lost probe) is "
                + ("met." if lossless == len(rows) and rows else "NOT met.")
            )
    cmp_ = []
    for iv in meta["intervals"]:
        for f in meta["faults"]:
            r, k = st("rampart", iv, f), st("keepalived", iv, f)
            if r and k:
                ratio = f"{r['gap_med'] / k['gap_med']:.2f}x" if k["gap_med"] > 0 else "-"
                take = ""
                if f == "kill" and r["take_med"] is not None and k["take_med"] is not None:
                    take = (f"; takeover {fmt_ms(r['take_med'])} vs {fmt_ms(k['take_med'])} ms, "
                            f"{r['take_med'] / k['take_med']:.2f}x")
                cmp_.append(
                    f"{f} at {iv}: rampart {fmt_ms(r['gap_med'])} ms vs keepalived "
                    f"{fmt_ms(k['gap_med'])} ms ({ratio}; failed probes {r['fail_med']:g} vs "
                    f"{k['fail_med']:g}{take})"
                )
    if cmp_:
        parts.append("At equal advert intervals (gap medians): " + "; ".join(cmp_) + ".")
    if "keepalived" in meta["systems"] and "kill" in meta["faults"]:
        parts.append(
            "Read the keepalived `kill` rows with care: SIGKILL ends only its VRRP daemon. "
            "nginx on lb1 keeps serving and the VIP stays on lb1's interface (keepalived "
            "leaves it there), so the client keeps reaching lb1 until lb2's gratuitous ARP "
            "moves it, and then reaches lb2: little or nothing is lost, but two hosts hold the "
            "VIP. For rampart the killed process is the balancer itself (its vip-guard then "
            "takes the VIP off lb1). The *takeover* column (the VIP on lb2) is the figure "
            "that compares there."
        )
    return " ".join(parts) if parts else "(no complete row)"


def report_main(a):
    meta = json.load(open(a.meta))
    trials = [json.loads(l) for l in open(a.trials) if l.strip()]
    intervals = meta["intervals"]
    faults = meta["faults"]
    systems = meta["systems"]
    out = []
    w = out.append
    w(f"# VRRP failover: rampart lb against keepalived ({meta['when']})\n")
    w("```")
    w(meta["command"])
    w("```\n")
    w(f"- rampart: commit `{meta['commit']}`, binary `{meta['rampart_bin']}`")
    w(f"- keepalived: {meta['keepalived']}; nginx: {meta['nginx']}")
    w(f"- machine: {meta['cpus']} CPUs ({meta['cpu_model']}), kernel {meta['kernel']}")
    loads = [t["load1"] for t in trials]
    busy = [t["busy_pct"] for t in trials if t.get("busy_pct") is not None]
    if loads:
        w(
            f"- load during the run: 1-minute load average {min(loads):.2f}-{max(loads):.2f} "
            f"(median {statistics.median(loads):.2f}) at the trials' starts; whole-machine CPU busy "
            f"during a trial median {statistics.median(busy):.0f} % (max {max(busy):.0f} %)"
            if busy else ""
        )
    w(f"- {meta['trials']} trials per row; run took {meta.get('elapsed', '?')}")
    w("")
    w(
        "Method: five network namespaces on one bridge (`10.78.0.0/24`): two balancer hosts "
        "(lb1 .11 priority 150, lb2 .12 priority 100, preempt on, VRID 51, VIP 10.78.0.100), a "
        "web host (.21, nginx `worker_processes 1`, return 200) and a client (.31). rampart: "
        "`rampart lb` on each balancer host, the site listener on VIP:80 forwarding to the web "
        "host. keepalived: `keepalived --vrrp` (VRRPv3, lb1 `state MASTER`, lb2 `state BACKUP`) "
        "and an nginx on 0.0.0.0:80 on each balancer host. Every trial starts from fresh "
        "namespaces and processes; lb1 must be the sole holder of the VIP and the client must "
        "reach the site before the fault. The client starts an HTTP GET (new connection, 200 ms "
        "timeout) every 10 ms (overlapping); the fault comes 2 s in. **Gap** = the longest time "
        "between the starts of two successful probes (so 10 ms is no loss at all); **failed** = "
        "probes that failed. *takeover* = the fault command's completion to the VIP appearing on "
        "lb2 (`ip monitor`). "
        + ("The probe runs at real-time priority (`chrt -f 20`) so its schedule holds on a busy "
           "machine; " if meta.get("probe_rt") else "The probe runs at normal priority; ")
        + "*probe lag* (every trial) is its longest pause between two probe starts. "
        "Faults: `link` = `ip -n SW link set <lb1's port> down`; `kill` = SIGKILL to every "
        "keepalived process of lb1 / to the `rampart lb` process; `stop` = SIGTERM to the same.\n"
    )
    for f in faults:
        w(f"## {FAULT_TITLE.get(f, f)}\n")
        w(
            "| interval | system | gap, median (min-max) ms | failed probes, median (min-max) "
            "| takeover, median ms | trials ok | load avg (median) | gap ratio rampart/keepalived |"
        )
        w("|---|---|---|---|---|---|---|---|")
        for iv in intervals:
            stats = {}
            for s in systems:
                rows = [t for t in trials if t["fault"] == f and t["interval"] == iv and t["system"] == s]
                if not rows:
                    continue
                stats[s] = (row_stats(rows), rows)
            ratio = "-"
            if stats.get("rampart", (None,))[0] and stats.get("keepalived", (None,))[0]:
                r, k = stats["rampart"][0]["gap_med"], stats["keepalived"][0]["gap_med"]
                ratio = f"{r / k:.2f} ({fmt_ms(r)} / {fmt_ms(k)})" if k > 0 else "-"
            for s in systems:
                if s not in stats:
                    continue
                st, rows = stats[s]
                label = iv + (" (rampart default)" if iv == meta.get("rampart_default") else "")
                if st is None:
                    w(f"| {label} | {s} | - | - | - | 0/{len(rows)} | - | {ratio if s == 'rampart' else ''} |")
                    continue
                take = "-" if st["take_med"] is None else fmt_ms(st["take_med"])
                w(
                    f"| {label} | {s} | {fmt_ms(st['gap_med'])} ({fmt_ms(st['gap_min'])}-{fmt_ms(st['gap_max'])}) "
                    f"| {st['fail_med']:g} ({st['fail_min']}-{st['fail_max']}) | {take} "
                    f"| {st['n_ok']}/{len(rows)} | {st['load']:.2f} | {ratio if s == 'rampart' else ''} |"
                )
        w("")
    w("## What the figures say\n")
    w(summary(trials, meta))
    w("")
    w("## Every trial\n")
    w(
        "Times in ms from the fault. gap from..to: the successful probes around the longest gap; "
        "VIP on lb2 / off lb1: `ip monitor` on each host; fail reasons: probe outcomes."
    )
    w("")
    w("| # | interval | fault | system | ok | gap | gap from..to | failed (why) | VIP on lb2 | VIP off lb1 | master exit | probe lag | load1 | note |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    def v(x):
        return "-" if x is None else x

    for i, t in enumerate(trials, 1):
        t = {k: v(x) for k, x in t.items()}
        why = ", ".join(f"{k} {v}" for k, v in sorted((t.get("failed_why") if isinstance(t.get("failed_why"), dict) else {}).items()))
        w(
            f"| {i} | {t['interval']} | {t['fault']} | {t['system']} | {'yes' if t.get('ok') else 'no'} "
            f"| {t.get('gap_ms', '-')} | {t.get('gap_from_ms', '-')}..{t.get('gap_to_ms', '-')} "
            f"| {t.get('failed', '-')}{' (' + why + ')' if why else ''} "
            f"| {t.get('vip_added_backup_ms', '-')} | {t.get('vip_deleted_master_ms', '-')} "
            f"| {t.get('master_exit', '-')} | {t.get('max_probe_start_lag_ms', '-')} "
            f"| {t.get('load1', 0)} | {t.get('note', '')} |"
        )
    w("")
    open(a.out, "w").write("\n".join(out) + "\n")
    # The tables (not the per-trial list) on stdout.
    text = "\n".join(out)
    print(text.split("## What the figures say")[0])
    return 0


def line_main(a):
    t = json.loads(a.json)
    head = f"{t['interval']:>5} {t['fault']:4} {t['system']:10} #{t['trial']}: "
    if t.get("ok"):
        print(
            head + f"gap {t['gap_ms']:.0f} ms, {t['failed']} failed, VIP on lb2 at "
            f"{t.get('vip_added_backup_ms')} ms, master {t['master_exit']}, load {t['load1']}"
        )
    else:
        extra = f" (gap {t['gap_ms']} ms, {t.get('failed')} failed)" if "gap_ms" in t else ""
        print(head + "NOT OK: " + (t.get("note") or "?") + extra)
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--vip", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--fault-at", type=float, default=2.0)
    p.add_argument("--fault-cmd", required=True)
    p.add_argument("--master-ns", required=True)
    p.add_argument("--backup-ns", required=True)
    p.add_argument("--interval-ms", type=float, required=True)
    p.add_argument("--limit", type=float, default=20.0)
    r = sub.add_parser("report")
    r.add_argument("--trials", required=True)
    r.add_argument("--meta", required=True)
    r.add_argument("--out", required=True)
    ln = sub.add_parser("line")
    ln.add_argument("json")
    a = ap.parse_args()
    if a.cmd == "probe":
        return asyncio.run(probe_main(a))
    if a.cmd == "line":
        return line_main(a)
    return report_main(a)


if __name__ == "__main__":
    sys.exit(main())
