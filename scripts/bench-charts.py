#!/usr/bin/env python3
"""SVG charts from tidemq-bench JSON lines (one line per run), for BENCHMARKS.md.

    scripts/bench-charts.py OUT_DIR RESULTS.jsonl... [--subject tidemq]

Writes one SVG per case: bars (median, with the range over runs as a whisker) for throughput,
connect rate and memory per connection; percentile curves for latency (the median over runs
at each percentile); RSS over time for the soak. The subject comes first, then the peers in
the order they appear. Prints the Markdown that embeds them, one line per chart.
No dependencies beyond the Python standard library.
"""

import json
import math
import os
import re
import sys
from collections import OrderedDict

COLORS = ["#1f6feb", "#d1242f", "#2da44e", "#bf8700", "#8250df", "#57606a"]
W, H = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 80, 20, 40, 50


def esc(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def compact(x):
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            v = x / div
            return f"{v:.3g}{suffix}"
    return f"{x:.3g}"


def median(values):
    v = sorted(values)
    n = len(v)
    if n == 0:
        return None
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def slug(case):
    return re.sub(r"[^a-z0-9]+", "-", case.lower().replace("→", "-to-").replace("×", "x")).strip("-")


def svg(title, body, width=W, height=H):
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">\n'
        f'<rect width="{width}" height="{height}" fill="white"/>\n'
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14" '
        f'font-weight="bold">{esc(title)}</text>\n{body}</svg>\n'
    )


def nice_max(x):
    if x <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if x <= m * exp:
            return m * exp
    return 10 * exp


def bars(title, unit, series, higher_is_better=True):
    """series: [(label, median, lo, hi)]"""
    top = nice_max(max(hi for _, _, _, hi in series) * 1.05)
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    out = []
    for i in range(5):
        v = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        out.append(f'<line x1="{LEFT}" y1="{y}" x2="{W - RIGHT}" y2="{y}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4}" text-anchor="end">{compact(v)}</text>')
    slot = plot_w / len(series)
    for i, (label, med, lo, hi) in enumerate(series):
        x = LEFT + slot * i + slot * 0.2
        bw = slot * 0.6
        h = plot_h * med / top
        y = TOP + plot_h - h
        color = COLORS[i % len(COLORS)]
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{h:.1f}" fill="{color}"/>')
        if hi > lo:
            cx = x + bw / 2
            y_lo = TOP + plot_h - plot_h * lo / top
            y_hi = TOP + plot_h - plot_h * hi / top
            out.append(f'<line x1="{cx:.1f}" y1="{y_lo:.1f}" x2="{cx:.1f}" y2="{y_hi:.1f}" stroke="black"/>')
            for yy in (y_lo, y_hi):
                out.append(f'<line x1="{cx - 6:.1f}" y1="{yy:.1f}" x2="{cx + 6:.1f}" y2="{yy:.1f}" stroke="black"/>')
        out.append(f'<text x="{x + bw / 2:.1f}" y="{y - 6:.1f}" text-anchor="middle">{compact(med)}</text>')
        out.append(f'<text x="{x + bw / 2:.1f}" y="{H - BOTTOM + 18}" text-anchor="middle">{esc(label)}</text>')
    better = "higher is better" if higher_is_better else "lower is better"
    out.append(f'<text x="{LEFT}" y="{H - 10}">{esc(unit)} ({better}; bar: median, whisker: range)</text>')
    return svg(title, "\n".join(out) + "\n")


def lines(title, xlabel, ylabel, series, xticks, logy=False, xlog_nines=False):
    """series: [(label, [(x, y)])]; xticks: [(x, text)]"""
    plot_w, plot_h = W - LEFT - RIGHT - 110, H - TOP - BOTTOM
    xs = [x for _, pts in series for x, _ in pts] + [x for x, _ in xticks]
    ys = [y for _, pts in series for _, y in pts if y > 0]
    if not xs or not ys:
        return None
    x0, x1 = min(xs), max(xs)
    if x1 <= x0:
        x1 = x0 + 1
    if logy:
        y0 = 10 ** math.floor(math.log10(min(ys)))
        y1 = 10 ** math.ceil(math.log10(max(ys)))
        if y1 <= y0:
            y1 = y0 * 10
        fy = lambda y: TOP + plot_h - plot_h * (math.log10(max(y, y0)) - math.log10(y0)) / (math.log10(y1) - math.log10(y0))
        yticks = []
        v = y0
        while v <= y1 * 1.0001:
            yticks.append(v)
            v *= 10
    else:
        y0, y1 = 0.0, nice_max(max(ys) * 1.1)
        fy = lambda y: TOP + plot_h - plot_h * (y - y0) / (y1 - y0)
        yticks = [y1 * i / 4 for i in range(5)]
    fx = lambda x: LEFT + plot_w * (x - x0) / (x1 - x0)
    out = []
    for v in yticks:
        y = fy(v)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{compact(v)}</text>')
    for x, text in xticks:
        px = fx(x)
        out.append(f'<line x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{TOP + plot_h}" stroke="#eee"/>')
        out.append(f'<text x="{px:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{esc(text)}</text>')
    for i, (label, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in pts if y > 0 or not logy)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        ly = TOP + 14 + 18 * i
        lx = LEFT + plot_w + 12
        out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 16}" y2="{ly - 4}" stroke="{color}" stroke-width="3"/>')
        out.append(f'<text x="{lx + 20}" y="{ly}">{esc(label)}</text>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{H - 14}" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(
        f'<text x="16" y="{TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {TOP + plot_h / 2})">{esc(ylabel)}</text>'
    )
    return svg(title, "\n".join(out) + "\n")


def nines(p):
    """Percentile → position on a "nines" axis: 50 → 0.3, 90 → 1, 99 → 2, 99.9 → 3."""
    return -math.log10(max(1e-5, 1 - p / 100))


def main(argv):
    subject = "tidemq"
    if "--subject" in argv:
        i = argv.index("--subject")
        subject = argv[i + 1]
        del argv[i : i + 2]
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir, files = argv[0], argv[1:]
    os.makedirs(out_dir, exist_ok=True)
    runs = OrderedDict()  # case -> label -> [json]
    labels = []
    for path in files:
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                d = json.loads(line)
                runs.setdefault(d["case"], OrderedDict()).setdefault(d["label"], []).append(d)
                if d["label"] not in labels:
                    labels.append(d["label"])
    order = lambda ls: sorted(ls, key=lambda l: (l != subject, labels.index(l)))
    made = []

    def write(name, text, caption):
        if text is None:
            return
        with open(os.path.join(out_dir, name), "w") as f:
            f.write(text)
        made.append((name, caption))

    for case, by_label in runs.items():
        first = next(iter(by_label.values()))[0]
        scenario = first["scenario"]
        ls = order(by_label.keys())
        if scenario in ("latency",):
            series = []
            for label in ls:
                curves = [r.get("latency_curve") for r in by_label[label] if r.get("latency_curve")]
                if not curves:
                    continue
                pts = []
                for j, (p, _) in enumerate(curves[0]):
                    if p >= 100:
                        continue
                    pts.append((nines(p), median([c[j][1] for c in curves if j < len(c)])))
                series.append((label, pts))
            ticks = [(nines(p), f"p{p:g}") for p in (50, 90, 99, 99.9, 99.99)]
            write(
                f"{slug(case)}.svg",
                lines(case, "percentile (median over runs at each)", "µs (log)", series, ticks, logy=True),
                f"{case}: latency percentiles",
            )
        elif scenario == "soak":
            series = []
            for label in ls:
                r = by_label[label][0]
                pts = [(t, kib / 1024) for t, kib in r.get("rss_samples", [])]
                if pts:
                    series.append((label, pts))
            end = max((pts[-1][0] for _, pts in series), default=0)
            step = nice_max(end / 6) if end > 0 else 1
            ticks = [(t, f"{t:g}") for t in [step * i for i in range(int(end // step) + 1)]]
            write(
                f"{slug(case)}.svg",
                lines(case, "seconds", "broker RSS MiB", series, ticks),
                f"{case}: broker RSS over the soak",
            )
        elif scenario == "connections":
            for key, unit, higher in (("rate", "connect rate conn/s", True), ("rss_per_conn_bytes", "broker RSS bytes per connection", False)):
                series = []
                for label in ls:
                    vals = [r[key] for r in by_label[label] if r.get(key) is not None]
                    if vals:
                        series.append((label, median(vals), min(vals), max(vals)))
                if series:
                    name = f"{slug(case)}-{'rate' if key == 'rate' else 'memory'}.svg"
                    write(name, bars(case, unit, series, higher), f"{case}: {unit}")
        else:
            series = []
            for label in ls:
                vals = [r["rate"] for r in by_label[label] if r.get("rate")]
                if vals:
                    series.append((label, median(vals), min(vals), max(vals)))
            if series:
                write(f"{slug(case)}.svg", bars(case, first.get("unit", "msg/s"), series), f"{case}: {first.get('unit', 'msg/s')}")
    for name, caption in made:
        print(f"![{caption}]({os.path.join(out_dir, name)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
