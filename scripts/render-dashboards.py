#!/usr/bin/env python3
"""Draw zenvoy's Grafana dashboards to PNG from a real Prometheus, without Grafana.

Each panel of dashboards/json/*.json is placed on Grafana's 24-column grid where its
gridPos says, its queries run against Prometheus' HTTP API over the chosen time range
(range queries, or instant ones where the panel asks for them) with Grafana's variables
filled in as Grafana would, and the result is drawn the way the panel type shows it:
time series as lines (stacked, bars, threshold lines as configured), stats as numbers
coloured by thresholds, state timelines as coloured bands, tables as rows. It is a
picture of the data the dashboards show, not of Grafana's own rendering.

Needs matplotlib (`.venv/bin/pip install matplotlib`); used by
scripts/dashboard-pictures.sh, which makes the pictures in docs/img/.

    render-dashboards.py --prometheus http://127.0.0.1:9090 --service web \
        --minutes 20 --out docs/img
"""

import argparse
import json
import math
import os
import re
import time
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Grafana's dark theme, near enough.
BG, PANEL, TEXT, DIM, GRID = "#111217", "#181b1f", "#ccccdc", "#8e8e9e", "#2c3235"
COLORS = {
    "green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "yellow": "#fade2a",
    "blue": "#5794f2", "purple": "#b877d9", "dark-red": "#c4162a", "dark-orange": "#fa6400",
    "text": TEXT,
}
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0"]
CELL_H = 30  # Grafana's grid row height, px


def color(name):
    return COLORS.get(name, name)


class Prometheus:
    def __init__(self, url):
        self.url = url.rstrip("/")

    def get(self, path, **params):
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{q}", timeout=30) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"{path}: {body.get('error')}")
        return body["data"]["result"]

    def range(self, expr, start, end, step):
        return self.get("/api/v1/query_range", query=expr, start=start, end=end, step=step)

    def instant(self, expr, at):
        return self.get("/api/v1/query", query=expr, time=at)


def substitute(expr, service, rate_interval, rng):
    return (expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
            .replace("$__range", rng).replace("${service}", service).replace("$service", service))


def legend(fmt, labels, ref):
    if fmt is None:
        return ref
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or ref


def fmt_value(v, unit, decimals=None):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "No data"
    if unit == "s":
        if v >= 60:
            return f"{v / 60:.1f} min"
        if v >= 1:
            return f"{v:.2f} s"
        return f"{v * 1000:.0f} ms"
    if unit == "Bps":
        for u in ["B/s", "kB/s", "MB/s", "GB/s"]:
            if abs(v) < 1000:
                return f"{v:.0f} {u}" if u == "B/s" else f"{v:.1f} {u}"
            v /= 1000
    suffix = unit.split(":", 1)[1].strip() if unit.startswith("suffix:") else ""
    d = decimals if decimals is not None else (0 if float(v).is_integer() else 2)
    return f"{v:.{d}f}{' ' + suffix if suffix else ''}"


def threshold_color(v, thresholds):
    c = thresholds[0]["color"]
    for step in thresholds[1:]:
        if v is not None and not math.isnan(v) and v >= step["value"]:
            c = step["color"]
    return color(c)


def overrides(panel):
    """Series name -> colour, and names on a right axis with their unit."""
    colors, right = {}, {}
    for o in panel.get("fieldConfig", {}).get("overrides", []):
        name = o["matcher"].get("options")
        for p in o["properties"]:
            if p["id"] == "color":
                colors[name] = color(p["value"]["fixedColor"])
            if p["id"] == "custom.axisPlacement" and p["value"] == "right":
                right[name] = next((q["value"] for q in o["properties"] if q["id"] == "unit"), "")
    return colors, right


def run_queries(prom, panel, args, start, end, step):
    out = []
    for t in panel.get("targets", []):
        expr = substitute(t["expr"], args.service, args.rate_interval, f"{int(end - start)}s")
        ref = t.get("refId", "A")
        if t.get("instant"):
            for s in prom.instant(expr, end):
                out.append((ref, legend(t.get("legendFormat"), s["metric"], ref), s["metric"],
                            [(end, float(s["value"][1]))]))
        else:
            for s in prom.range(expr, start, end, step):
                pts = [(float(x), float(v)) for x, v in s["values"]]
                out.append((ref, legend(t.get("legendFormat"), s["metric"], ref), s["metric"], pts))
    return out


def draw_timeseries(ax, panel, series, start, end):
    d = panel["fieldConfig"]["defaults"]
    custom = d.get("custom", {})
    unit = d.get("unit", "")
    colors, right = overrides(panel)
    bars = custom.get("drawStyle") == "bars"
    stacked = custom.get("stacking", {}).get("mode") == "normal"
    points = custom.get("showPoints") == "always"
    ax2 = None
    base = None
    for i, (_, name, _, pts) in enumerate(sorted(series, key=lambda s: s[1])):
        xs = [mdates.epoch2num(x) if hasattr(mdates, "epoch2num") else x / 86400.0 for x, _ in pts]
        ys = [v for _, v in pts]
        c = colors.get(name, PALETTE[i % len(PALETTE)])
        target = ax
        if name in right:
            ax2 = ax2 or ax.twinx()
            target = ax2
            target.plot(xs, ys, color=c, lw=1.2, ls="--", label=name)
            continue
        if stacked:
            import numpy as np
            y = np.array([0 if math.isnan(v) else v for v in ys])
            if base is None or len(base) != len(y):
                base = np.zeros(len(y))
            target.fill_between(xs, base, base + y, step="post", color=c, alpha=0.6, lw=0, label=name)
            base = base + y
        elif bars:
            width = (xs[1] - xs[0]) * 0.8 if len(xs) > 1 else 0.0005
            target.bar(xs, ys, width=width, color=c, label=name, align="center")
        else:
            target.plot(xs, ys, color=c, lw=1.2, label=name, marker="o" if points else None, ms=3)
            target.fill_between(xs, ys, color=c, alpha=0.08)
    if custom.get("thresholdsStyle", {}).get("mode") in ("dashed", "line"):
        for step in d["thresholds"]["steps"][1:]:
            ax.axhline(step["value"], color=color(step["color"]), ls="--", lw=0.8)
    ax.set_xlim(start / 86400.0, end / 86400.0)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: fmt_value(v, unit)))
    ax.set_ylim(bottom=0)
    for a in filter(None, [ax, ax2]):
        a.tick_params(colors=DIM, labelsize=7)
        for s in a.spines.values():
            s.set_color(GRID)
    if ax2:
        runit = next(iter(right.values()))
        ax2.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: fmt_value(v, runit)))
        ax2.set_ylim(bottom=0)
    ax.grid(color=GRID, lw=0.5)
    handles, labels = ax.get_legend_handles_labels()
    if ax2:
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="upper left", fontsize=6.5, frameon=False, labelcolor=TEXT,
                  ncol=min(6, len(handles)), bbox_to_anchor=(0, -0.1))
    if not series:
        ax.text(0.5, 0.5, "No data", color=DIM, ha="center", va="center", transform=ax.transAxes)


def draw_stat(ax, panel, series):
    d = panel["fieldConfig"]["defaults"]
    colors, _ = overrides(panel)
    ax.axis("off")
    if not series:
        ax.text(0.5, 0.5, "No data", color=DIM, ha="center", va="center", fontsize=14)
        return
    names = panel["options"].get("textMode") == "value_and_name"
    background = panel["options"].get("colorMode") == "background"
    n = len(series)
    for i, (_, name, _, pts) in enumerate(sorted(series, key=lambda s: s[1])):
        v = next((y for _, y in reversed(pts) if not math.isnan(y)), float("nan"))
        c = colors.get(name) or threshold_color(v, d["thresholds"]["steps"])
        x0, w = i / n, 1 / n
        if background:
            ax.add_patch(Rectangle((x0 + 0.01, 0.05), w - 0.02, 0.9, color=c, transform=ax.transAxes))
        txt = fmt_value(v, d.get("unit", ""), d.get("decimals"))
        ax.text(x0 + w / 2, 0.45, txt, color="white" if background else c, ha="center", va="center",
                fontsize=min(26, 70 / max(n, 1) + 8), fontweight="bold", transform=ax.transAxes)
        if names:
            ax.text(x0 + w / 2, 0.8, name, color="white" if background else TEXT, ha="center", va="center",
                    fontsize=8, transform=ax.transAxes)


def draw_state_timeline(ax, panel, series, start, end):
    mappings = panel["fieldConfig"]["defaults"].get("mappings", [{}])[0].get("options", {})
    rows = sorted(series, key=lambda s: s[1])
    for r, (_, name, _, pts) in enumerate(rows):
        y = len(rows) - r - 1
        for (x, v), nxt in zip(pts, pts[1:] + [(end, None)]):
            if math.isnan(v):
                continue
            m = mappings.get(str(int(v)), {})
            ax.add_patch(Rectangle((x / 86400.0, y + 0.1), (nxt[0] - x) / 86400.0, 0.8,
                                   color=color(m.get("color", "grey")), lw=0))
        ax.text(start / 86400.0, y + 0.5, f" {name}", color="white", va="center", fontsize=7)
    ax.set_xlim(start / 86400.0, end / 86400.0)
    ax.set_ylim(0, max(len(rows), 1))
    ax.set_yticks([])
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    ax.tick_params(colors=DIM, labelsize=7)
    for s in ax.spines.values():
        s.set_color(GRID)
    handles = [Rectangle((0, 0), 1, 1, color=color(m["color"])) for m in mappings.values()]
    ax.legend(handles, [m["text"] for m in mappings.values()], loc="upper left", fontsize=6.5, frameon=False,
              labelcolor=TEXT, ncol=len(handles), bbox_to_anchor=(0, -0.12))
    if not series:
        ax.text(0.5, 0.5, "No data", color=DIM, ha="center", va="center", transform=ax.transAxes)


def draw_table(ax, panel, series):
    ax.axis("off")
    org = next((t["options"] for t in panel.get("transformations", []) if t["id"] == "organize"), {})
    names = org.get("renameByName", {})
    units = {}
    for o in panel.get("fieldConfig", {}).get("overrides", []):
        for p in o["properties"]:
            if p["id"] == "unit":
                units[o["matcher"]["options"]] = p["value"]
    cols = ["service"] + list(names.values())
    rows = {}
    for ref, _, labels, pts in series:
        svc = labels.get("service", "")
        rows.setdefault(svc, {})[names.get(f"Value #{ref}", ref)] = pts[-1][1]
    sort = panel["options"].get("sortBy", [{}])
    key = sort[0].get("displayName") if sort else None
    ordered = sorted(rows.items(), key=lambda kv: -(kv[1].get(key) or 0) if key else kv[0])
    cells = [[svc] + [fmt_value(r.get(c), units.get(c, "short"), 1) for c in cols[1:]] for svc, r in ordered]
    if not cells:
        ax.text(0.5, 0.5, "No data", color=DIM, ha="center", va="center")
        return
    t = ax.table(cellText=cells, colLabels=cols, loc="upper center", cellLoc="left")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    for (_, _), cell in t.get_celld().items():
        cell.set_facecolor(PANEL)
        cell.set_edgecolor(GRID)
        cell.get_text().set_color(TEXT)


def render(prom, dashboard, args, out):
    end = args.end or time.time()
    start = end - args.minutes * 60
    step = max(1, int((end - start) / 300))
    panels = dashboard["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    px_w, px_h = 1800, height * CELL_H + 60
    fig = plt.figure(figsize=(px_w / 100, px_h / 100), dpi=100, facecolor=BG)
    sub = f"service = {args.service}, " if any(v["name"] == "service" for v in dashboard["templating"]["list"]) else ""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(start)) + " - " + time.strftime("%H:%M", time.localtime(end))
    fig.text(0.01, 1 - 25 / px_h, dashboard["title"], color=TEXT, fontsize=15, fontweight="bold", va="center")
    fig.text(0.99, 1 - 25 / px_h, f"{sub}{when}, Prometheus data", color=DIM, fontsize=9, va="center", ha="right")
    top = 50

    def box(g, pad_top=22, pad_bottom=6):
        x = g["x"] / 24
        w = g["w"] / 24
        y0 = top + g["y"] * CELL_H
        return [x + 0.004, 1 - (y0 + g["h"] * CELL_H - pad_bottom) / px_h, w - 0.008,
                (g["h"] * CELL_H - pad_top - pad_bottom) / px_h]

    for p in panels:
        g = p["gridPos"]
        if p["type"] == "row":
            fig.text(0.006, 1 - (top + g["y"] * CELL_H + 15) / px_h, p["title"], color=TEXT, fontsize=11,
                     fontweight="bold", va="center")
            continue
        frame = box(g, pad_top=0, pad_bottom=2)
        fig.add_artist(Rectangle((frame[0], frame[1]), frame[2], frame[3], transform=fig.transFigure,
                                 facecolor=PANEL, edgecolor=GRID, lw=0.8, zorder=-10))
        fig.text(frame[0] + 0.004, frame[1] + frame[3] - 12 / px_h, p["title"], color=TEXT, fontsize=9,
                 va="center", fontweight="bold")
        kind = p["type"]
        inner = box(g, pad_top=30, pad_bottom=32 if kind in ("timeseries", "state-timeline") else 8)
        inner[0] += 0.03 if kind == "timeseries" else 0.004
        inner[2] -= 0.05 if kind == "timeseries" else 0.008
        ax = fig.add_axes(inner, facecolor=PANEL)
        try:
            series = run_queries(prom, p, args, start, end, step)
        except Exception as e:  # a panel whose query fails says so in the picture
            ax.axis("off")
            ax.text(0.5, 0.5, f"query error: {e}", color=COLORS["red"], ha="center", va="center", fontsize=7, wrap=True)
            continue
        if kind == "timeseries":
            draw_timeseries(ax, p, series, start, end)
        elif kind == "stat":
            draw_stat(ax, p, series)
        elif kind == "state-timeline":
            draw_state_timeline(ax, p, series, start, end)
        elif kind == "table":
            draw_table(ax, p, series)
    fig.savefig(out, facecolor=BG)
    plt.close(fig)
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--service", default="echo", help="the Service dashboard's service")
    ap.add_argument("--minutes", type=float, default=30, help="time range, ending now (or --end)")
    ap.add_argument("--end", type=float, help="end of the range, Unix seconds")
    ap.add_argument("--rate-interval", default="1m", help="what $__rate_interval stands for")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "img"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    prom = Prometheus(args.prometheus)
    for uid in ["zenvoy-overview", "zenvoy-service"]:
        with open(os.path.join(ROOT, "dashboards", "json", f"{uid}.json")) as f:
            d = json.load(f)
        render(prom, d, args, os.path.join(args.out, f"{uid}.png"))


if __name__ == "__main__":
    main()
