"""The monitoring report: monitor.md, a self-contained monitor.html and three PNG time series
(traffic and latency, drift scores per feature, class mix), one point per window."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from modelcycle.evaluation.plots import blank_figure, label, legend_outside, new_figure, save, say
from modelcycle.evaluation.report import html_context, html_plots, markdown_table
from modelcycle.monitor.drift import Thresholds

PLOTS = ("traffic.png", "drift.png", "classes.png")
WINDOW_COLUMNS = ["window", "start (UTC)", "end", "images", "requests", "p50 ms", "p99 ms", "verdict", "features"]
FEATURE_COLUMNS = ["test", "figures", "verdict", "decided by"]
DPI = 90


def plot_traffic(windows: list[dict], path: Path) -> Figure:
    x = [w["index"] for w in windows]
    fig, axes = new_figure(11, 3.8, 1, 2)
    left, right = axes[0]
    left.bar(x, [w["requests"] for w in windows], color="#8ab")
    label(left, "requests per window", "window", "requests", integer_x=True)
    right.plot(x, [w["latency_p50_ms"] for w in windows], marker="o", label="p50")
    right.plot(x, [w["latency_p99_ms"] for w in windows], marker="o", label="p99")
    label(right, "latency (queue + model)", "window", "ms", integer_x=True)
    right.legend(loc="best", fontsize=8)
    return save(fig, path, DPI)


def plot_drift(windows: list[dict], limits: Thresholds, path: Path) -> Figure:
    """PSI per feature on top (log scale: 0.01 to 10 all occur; legend outside, so it never covers
    a line), OOD rate and mean confidence, and the embedding shift below."""
    x = [w["index"] for w in windows]
    fig = blank_figure(12, 6.8)
    axes = fig.subplot_mosaic([["psi", "psi"], ["rate", "shift"]])
    psi_ax, rate_ax, shift_ax = axes["psi"], axes["rate"], axes["shift"]
    tested = dict.fromkeys(n for w in windows for n, s in w["features"].items() if "psi" in s)
    for name in tested:  # a gap where a window could not measure the feature (no sizes from /v2 tensors)
        psi = [max(w["features"].get(name, {}).get("psi", np.nan), 1e-3) for w in windows]
        psi_ax.plot(x, psi, marker="o", label=name)
    psi_ax.axhline(limits.psi_warn, color="orange", ls="--", lw=1, label=f"warn (PSI {limits.psi_warn:g})")
    psi_ax.axhline(limits.psi_alert, color="red", ls="--", lw=1, label=f"drift (PSI {limits.psi_alert:g})")
    psi_ax.set_yscale("log")
    psi_ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.05, 0.1, 0.2, 0.5: the levels
    psi_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.1, not 10^-1
    psi_ax.yaxis.set_minor_formatter(NullFormatter())
    label(psi_ax, "PSI per feature", "window", "PSI (log scale)", integer_x=True)
    legend_outside(psi_ax)
    rate_ax.plot(x, [w["features"]["ood_rate"]["rate"] for w in windows], marker="o", label="OOD rate")
    rate_ax.plot(x, [w["features"]["confidence_collapse"]["mean"] for w in windows], marker="o", label="confidence")
    rate_ax.axhline(limits.ood_alert, color="red", ls="--", lw=1, label=f"OOD alert ({limits.ood_alert:g})")
    rate_ax.set_ylim(0, 1)
    label(rate_ax, "out-of-distribution rate, mean confidence", "window", "share / max-softmax", integer_x=True)
    legend_outside(rate_ax)
    if "embedding" in windows[0]["features"]:
        shift_ax.plot(x, [w["features"]["embedding"]["shift"] for w in windows], marker="o", color="green")
        shift_ax.axhline(limits.embedding_alert, color="red", ls="--", lw=1)
        label(shift_ax, "embedding mean shift (dashed: alert)", "window", "reference std devs", integer_x=True)
    else:
        shift_ax.set_title("embedding mean shift")
        say(shift_ax, "no embedding in the reference profile (the model's last layer is not a Linear head)", 40)
    return save(fig, path, DPI)


def plot_classes(windows: list[dict], reference: list[float], classes: list[str], path: Path) -> Figure:
    shares = np.asarray([reference] + [np.asarray(w["class_counts"]) / w["images"] for w in windows])
    positions = [-1] + [w["index"] for w in windows]
    fig, axes = new_figure(11, 3.8)
    ax = axes[0, 0]
    bottom = np.zeros(len(shares))
    colours = matplotlib.colormaps["tab20"]
    for k, name in enumerate(classes[:20]):  # more than 20 would be an unreadable stack
        ax.bar(positions, shares[:, k], bottom=bottom, color=colours(k), label=name)
        bottom += shares[:, k]
    label(ax, "predicted-class mix per window (-1: the reference profile)", "window", "share", integer_x=True)
    legend_outside(ax, ncol=max(1, len(classes[:20]) // 10))
    return save(fig, path, DPI)


def _window_rows(windows: list[dict]) -> list[list]:
    return [
        [
            w["index"],
            w["start"],
            w["end"],
            w["images"],
            w["requests"],
            f"{w['latency_p50_ms']:.1f}",
            f"{w['latency_p99_ms']:.1f}",
            w["verdict"],
            ", ".join(w["drifted"] or w["warned"]) or "-",
        ]
        for w in windows
    ]


def _feature_rows(window: dict) -> list[list]:
    rows = []
    for name, s in window["features"].items():
        if "psi" in s:
            figure = (
                f"PSI {s['psi']:.3f} over {s['bins']} bins, KS {s['ks']:.3f} (p {s['ks_p']:.1e}), "
                f"mean {s['mean']:.3f} vs {s['reference_mean']:.3f}"
            )
        elif s["drift"] == "unmeasured":
            figure = f"{s['values']} values in the window: too few to test (reference mean {s['reference_mean']:.3f})"
        elif name == "class_mix":
            figure = f"chi-squared {s['chi2']:.1f}, p {s['p']:.1e}"
        elif name == "embedding":
            figure = f"mean shift {s['shift']:.3f} reference std devs"
        elif name == "ood_rate":
            figure = f"{s['rate']:.1%} below confidence {s['threshold']:.3f} (expected {s['expected']:.0%})"
        else:
            figure = f"mean {s['mean']:.3f} vs {s['reference_mean']:.3f}"
        rows.append([name, figure, s["drift"], s["reason"]])
    return rows


def write_report(out: Path, summary: dict, limits: Thresholds) -> Path:
    """``summary`` is what ``modelcycle monitor --json`` prints; returns monitor.html's path."""
    out.mkdir(parents=True, exist_ok=True)
    windows = summary["windows"]
    plots = []
    if windows:
        plot_traffic(windows, out / PLOTS[0])
        plot_drift(windows, limits, out / PLOTS[1])
        plot_classes(windows, summary["class_shares"], summary["classes"], out / PLOTS[2])
        plots = list(PLOTS)
    title = f"Monitoring of {summary['model']}"
    context = {
        "prediction log": summary["log"],
        "reference": summary["reference"],
        "images logged": summary["images"],
        "windows": f"{len(windows)} of {summary['window']} images, one every {summary['step']}; {summary['note']}",
        "thresholds": ", ".join(f"{k} {v:g}" for k, v in summary["thresholds"].items()),
    }
    verdicts = markdown_table(WINDOW_COLUMNS, _window_rows(windows))
    latest = markdown_table(FEATURE_COLUMNS, _feature_rows(windows[-1])) if windows else ""
    info = "\n".join(f"- **{k}**: {v}" for k, v in context.items())
    empty = "" if windows else f"\nNo complete window yet: {summary['note']}.\n"
    md = (
        f"# {title}\n\n{info}\n{empty}\n## Verdict per window\n\n{verdicts}\n\n"
        + (f"## Latest window, test by test\n\n{latest}\n\n" if windows else "")
        + "".join(f"## {p[:-4].capitalize()}\n\n![{p}]({p})\n\n" for p in plots)
    )
    (out / "monitor.md").write_text(md)
    (out / "monitor.html").write_text(_html(title, context, windows, plots, out, summary["note"]))
    return out / "monitor.html"


def _html(title: str, context: dict, windows: list[dict], plots: list[str], folder: Path, summary_note: str) -> str:
    esc = html.escape

    def table(headers: list[str], rows: list[list]) -> str:
        """Rows are coloured by their verdict (ok, warn, drift)."""
        level = headers.index("verdict")
        head = "".join(f"<th>{esc(h)}</th>" for h in headers)
        body = "".join(
            f"<tr class='{esc(str(r[level]))}'>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    verdicts = table(WINDOW_COLUMNS, _window_rows(windows))
    latest = (
        table(FEATURE_COLUMNS, _feature_rows(windows[-1]))
        if windows
        else f"<p>No complete window yet: {esc(summary_note)}.</p>"
    )
    images, ctx = html_plots(folder, plots), html_context(context)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
tr.drift td{{background:#fdd}}tr.warn td{{background:#ffe9c0}}img{{max-width:100%;border:1px solid #eee}}</style>
</head><body><h1>{esc(title)}</h1><ul>{ctx}</ul><h2>Verdict per window</h2>{verdicts}
<h2>Latest window, test by test</h2>{latest}{images}</body></html>"""
