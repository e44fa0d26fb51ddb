#!/usr/bin/env python3
"""A picture of a bench/lb-scale report: CPU per request against pool size, rampart and
HAProxy, one panel per algorithm, all panels on one scale.

    python3 bench/lb-scale/chart.py bench/results/lb-scale-<time>.md [--out FILE.svg]

Reads the report's first table of each algorithm (the medians), so it draws any report that
run.sh wrote, old ones included; writes an SVG (default: the report's path with .svg). Standard
library only.
"""

import argparse
import math
import re
import sys
from html import escape

BALANCERS = [("rampart", "rampart lb", "#1f77b4", ""), ("HAProxy", "HAProxy", "#d62728", "6 4")]
PANEL_W, PANEL_H = 230, 200
LEFT, TOP, GAP = 58, 64, 22
PLOT_W, PLOT_H = PANEL_W - 20, PANEL_H - 58


def parse(text):
    """{algorithm: [(servers, rampart_us, haproxy_us)]} from the report's first table of each
    `### <algorithm> (HAProxy: ...)` section, and the report's title line of facts."""
    out = {}
    algo = None
    header = None
    for line in text.splitlines():
        m = re.match(r"^### (\S+) \(HAProxy: ", line)
        if m:
            algo, header = m.group(1), None
            continue
        if line.startswith("## ") or line.startswith("# "):
            algo = None
            continue
        if algo is None or not line.startswith("|"):
            if algo and header and out.get(algo):
                algo = None  # the first table ended: the rest of the section is not ours
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        row = dict(zip(header, cells))
        try:
            n = int(row["servers"].replace(",", ""))
            r = float(row["rampart us/req"])
            h = float(row["HAProxy us/req"])
        except (KeyError, ValueError):
            continue
        out.setdefault(algo, []).append((n, r, h))
    return out


def nice_max(v):
    """A round axis top at or above v."""
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def svg(data, title):
    algos = list(data)
    cols = min(len(algos), 5)
    rows = math.ceil(len(algos) / cols)
    width = LEFT + cols * PANEL_W + (cols - 1) * GAP + 10
    height = TOP + rows * (PANEL_H + GAP) + 10
    sizes = sorted({n for pts in data.values() for n, _, _ in pts})
    lo, hi = math.log10(min(sizes)), math.log10(max(sizes))
    if hi == lo:
        hi = lo + 1
    top = max(max(r, h) for pts in data.values() for _, r, h in pts) * 1.05
    step = nice_max(top / 4)
    ticks = math.ceil(top / step)
    ymax = ticks * step
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{escape(title)}</text>']
    # Legend.
    x = LEFT
    for _, label, color, dash in BALANCERS:
        o.append(f'<line x1="{x}" y1="38" x2="{x + 24}" y2="38" stroke="{color}" stroke-width="2.5" '
                 f'stroke-dasharray="{dash}"/>')
        o.append(f'<text x="{x + 30}" y="42">{label}</text>')
        x += 120
    o.append(f'<text x="{x + 10}" y="42" fill="#555">CPU microseconds per request (lower is '
             'better) against servers in the pool</text>')
    for k, algo in enumerate(algos):
        px = LEFT + (k % cols) * (PANEL_W + GAP)
        py = TOP + (k // cols) * (PANEL_H + GAP)
        x0, y0 = px, py + 22
        sx = lambda n: x0 + (math.log10(n) - lo) / (hi - lo) * PLOT_W
        sy = lambda v: y0 + PLOT_H - v / ymax * PLOT_H
        o.append(f'<text x="{px + PLOT_W / 2}" y="{py + 12}" text-anchor="middle" '
                 f'font-weight="bold">{escape(algo)}</text>')
        o.append(f'<rect x="{x0}" y="{y0}" width="{PLOT_W}" height="{PLOT_H}" fill="none" '
                 'stroke="#bbb"/>')
        for t in range(0, ticks + 1):
            v = step * t
            y = sy(v)
            o.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + PLOT_W}" y2="{y:.1f}" stroke="#eee"/>')
            if k % cols == 0:
                o.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">'
                         f'{v:g}</text>')
        for n in sizes:
            o.append(f'<text x="{sx(n):.1f}" y="{y0 + PLOT_H + 16}" text-anchor="middle" '
                     f'fill="#555">{n:,}</text>')
        pts = sorted(data[algo])
        for b, (key, _, color, dash) in enumerate(BALANCERS):
            xy = [(sx(n), sy(v[b])) for n, *v in pts]
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
            o.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2.5" '
                     f'stroke-dasharray="{dash}"/>')
            for (x, y), (n, *v) in zip(xy, pts):
                o.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}">'
                         f'<title>{key}, {n:,} servers: {v[b]:.2f} us/request</title></circle>')
        # The last size's ratio, written under the panel's title.
        n, r, h = pts[-1]
        o.append(f'<text x="{px + PLOT_W / 2}" y="{y0 + PLOT_H + 32}" text-anchor="middle" '
                 f'fill="#333">at {n:,}: rampart {r / h:.2f}x HAProxy</text>')
        if algo == "source-ip-hash":
            o.append(f'<text x="{px + PLOT_W / 2}" y="{y0 + 14}" text-anchor="middle" '
                     'font-size="11" fill="#555">one client address, so one server</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report")
    ap.add_argument("--out")
    ap.add_argument("--title")
    a = ap.parse_args()
    text = open(a.report).read()
    data = parse(text)
    if not data:
        sys.exit(f"{a.report}: no algorithm table (### <algorithm> (HAProxy: ...)) found")
    m = re.search(r"^(\d{4}-\d\d-\d\d) .*?rampart (\w+)", text, re.M)
    title = a.title or ("rampart lb and HAProxy as the pool grows"
                        + (f" ({m.group(1)}, rampart {m.group(2)})" if m else ""))
    out = a.out or re.sub(r"\.md$", "", a.report) + ".svg"
    with open(out, "w") as f:
        f.write(svg(data, title))
    print(out)


if __name__ == "__main__":
    main()
