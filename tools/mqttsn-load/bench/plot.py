#!/usr/bin/env python3
"""Draws the overload benchmark's plots as plain SVG (no plotting library needed) from the JSON
files that overload.sh makes mqttsn-load write:

  saturation.svg   delivered against offered QoS 0 rate, 0.5x to 3x the broker's direct rate
  latency-cdf.svg  end-to-end latency distributions of those runs, and the QoS 1 round trips of
                   the fairness runs (alone, and beside a flooding device)

Usage: plot.py DIR   (writes the SVGs into DIR, next to the JSON files)
"""

import glob
import json
import math
import os
import sys

W, H = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 80, 200, 40, 60
COLOURS = ["#1b6ca8", "#d1495b", "#edae49", "#2a9d3f", "#8d6a9f", "#7f5539", "#30343f", "#e76f51"]


def load(path):
    with open(path) as f:
        return json.load(f)


class Svg:
    def __init__(self, title):
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
            f'font-family="sans-serif" font-size="12">',
            f'<rect width="{W}" height="{H}" fill="white"/>',
            f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>',
        ]

    def add(self, element):
        self.parts.append(element)

    def text(self, x, y, s, anchor="start", extra=""):
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {extra}>{s}</text>')

    def line(self, points, colour, width=2, dash=None):
        d = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="{width}"{dashed}/>')

    def dot(self, x, y, colour):
        self.add(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>')

    def legend(self, row, label, colour, dash=None):
        y = TOP + 10 + row * 18
        x = W - RIGHT + 15
        self.line([(x, y), (x + 24, y)], colour, dash=dash)
        self.text(x + 30, y + 4, label)

    def save(self, path):
        self.parts.append("</svg>")
        with open(path, "w") as f:
            f.write("\n".join(self.parts) + "\n")


def axes(svg, xlabel, ylabel, xticks, yticks):
    """xticks/yticks: lists of (pixel, label)."""
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP
    svg.add(f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="none" stroke="#999"/>')
    for px, label in xticks:
        svg.add(f'<line x1="{px:.1f}" y1="{y0}" x2="{px:.1f}" y2="{y1}" stroke="#eee"/>')
        svg.text(px, y0 + 16, label, "middle")
    for py, label in yticks:
        svg.add(f'<line x1="{x0}" y1="{py:.1f}" x2="{x1}" y2="{py:.1f}" stroke="#eee"/>')
        svg.text(x0 - 6, py + 4, label, "end")
    svg.text((x0 + x1) / 2, H - 18, xlabel, "middle")
    svg.text(18, (y0 + y1) / 2, ylabel, "middle", f'transform="rotate(-90 18 {(y0 + y1) / 2})"')


def saturation(out):
    direct = load(os.path.join(out, "direct.json"))["received_per_s"]
    runs = []
    for path in glob.glob(os.path.join(out, "saturation-*.json")):
        if path.endswith(".meta.json"):
            continue
        factor = float(os.path.basename(path)[len("saturation-"):-len(".json")])
        r = load(path)
        runs.append((factor, r["sent_per_s"], r["received_per_s"], r["lost"], r["sent"]))
    runs.sort()
    if not runs:
        return
    top = max(max(s for _, s, _, _, _ in runs), direct) * 1.1
    sx = lambda v: LEFT + v / top * (W - LEFT - RIGHT)
    sy = lambda v: H - BOTTOM - v / top * (H - TOP - BOTTOM)
    svg = Svg("QoS 0 through the gateway: delivered against offered")
    step = 10 ** math.floor(math.log10(top / 4))
    step *= 2 if top / step > 10 else 1
    ticks = [(i * step) for i in range(int(top / step) + 1)]
    axes(svg, "offered (achieved send rate), msg/s", "delivered to the subscriber, msg/s",
         [(sx(t), f"{t / 1000:.0f}k") for t in ticks], [(sy(t), f"{t / 1000:.0f}k") for t in ticks])
    svg.line([(sx(0), sy(0)), (sx(top), sy(top))], "#aaa", 1, "4 4")
    svg.line([(sx(0), sy(direct)), (sx(top), sy(direct))], COLOURS[1], 1.5, "6 3")
    points = [(sx(s), sy(r)) for _, s, r, _, _ in runs]
    svg.line(points, COLOURS[0])
    for (f, s, r, lost, sent), (px, py) in zip(runs, points):
        svg.dot(px, py, COLOURS[0])
        svg.text(px + 6, py - 6, f"{f}x, {100.0 * lost / max(sent, 1):.0f}% dropped", extra='font-size="10"')
    svg.legend(0, "delivered", COLOURS[0])
    svg.legend(1, "broker direct", COLOURS[1], "6 3")
    svg.legend(2, "no loss", "#aaa", "4 4")
    svg.save(os.path.join(out, "saturation.svg"))


def cdf(out):
    runs = []
    for path in glob.glob(os.path.join(out, "saturation-*.json")):
        if path.endswith(".meta.json"):
            continue
        factor = os.path.basename(path)[len("saturation-"):-len(".json")]
        runs.append((float(factor), factor, path))
    curves = [(f"QoS 0 e2e, {f}x", load(path)["e2e_ns"], None) for _, f, path in sorted(runs)]
    for name, label in [("fair-alone", "QoS 1 ack, alone"), ("fair-steady", "QoS 1 ack, flood")]:
        path = os.path.join(out, name + ".json")
        if os.path.exists(path):
            curves.append((label, load(path)["rtt_ns"], "6 3"))
    curves = [(label, [(q, ns) for q, ns in pts if ns > 0], dash) for label, pts, dash in curves]
    curves = [c for c in curves if c[1]]
    if not curves:
        return
    lo = min(ns for _, pts, _ in curves for _, ns in pts)
    hi = max(ns for _, pts, _ in curves for _, ns in pts)
    lmin, lmax = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    sx = lambda ns: LEFT + (math.log10(ns) - lmin) / max(lmax - lmin, 1) * (W - LEFT - RIGHT)
    sy = lambda q: H - BOTTOM - q * (H - TOP - BOTTOM)
    names = {3: "1 µs", 4: "10 µs", 5: "100 µs", 6: "1 ms", 7: "10 ms", 8: "100 ms", 9: "1 s", 10: "10 s"}
    svg = Svg("Latency distributions (cumulative)")
    axes(svg, "latency (log scale)", "fraction of messages",
         [(sx(10 ** e), names.get(e, f"1e{e} ns")) for e in range(lmin, lmax + 1)],
         [(sy(q / 10), f"{q / 10:.1f}") for q in range(0, 11, 2)])
    for i, (label, pts, dash) in enumerate(curves):
        colour = COLOURS[i % len(COLOURS)]
        svg.line([(sx(ns), sy(q)) for q, ns in pts], colour, 2, dash)
        svg.legend(i, label, colour, dash)
    svg.save(os.path.join(out, "latency-cdf.svg"))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    saturation(sys.argv[1])
    cdf(sys.argv[1])
    print(f"plots written to {sys.argv[1]}/saturation.svg and {sys.argv[1]}/latency-cdf.svg")
