"""The evaluation report: report.md, a self-contained report.html and PNG plots."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from matplotlib.figure import Figure

from modelcycle.data.images import load_image
from modelcycle.evaluation.metrics import top5_label
from modelcycle.evaluation.plots import label, mark_best, new_figure, save, say, wrap
from modelcycle.track.figures import confusion_figure

TITLE_CHARS = 22  # a mistake's title line at font size 8 fits a 2.2-inch column with room to spare


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path) -> Figure:
    return save(confusion_figure(matrix, classes), path)


def best_epoch(epochs: list[dict], monitor: tuple[str, str] | None) -> tuple[str, int, float] | None:
    """(metric, epoch, value) of the epoch best.pt holds: the first best of ``monitor`` = (train.monitor,
    "max" | "min"). Without it, the trainer's default: val_accuracy, else val_loss."""
    if monitor is None:
        monitor = ("val_accuracy", "max") if any("val_accuracy" in m for m in epochs) else ("val_loss", "min")
    key, direction = monitor
    scored = [m for m in epochs if m.get(key) is not None]
    if not scored:
        return None
    best = (max if direction == "max" else min)(scored, key=lambda m: m[key])  # the first of equals, as the trainer
    return key, best["epoch"], best[key]


def plot_curves(epochs: list[dict], path: Path, monitor: tuple[str, str] | None = None) -> Figure:
    """Loss and accuracy per epoch, train and val on the same axes (plus the monitored metric when it is
    neither), and the best epoch marked: a dotted line on both panels and a star on its metric."""
    fig, axes = new_figure(11, 4.2, 1, 2)
    loss_ax, score_ax = axes[0]
    x = [m["epoch"] for m in epochs]
    best = best_epoch(epochs, monitor)
    extra = [best[0]] if best and "loss" not in best[0] and not best[0].endswith("accuracy") else []
    panels = ((loss_ax, "loss", ["train_loss", "val_loss"]), (score_ax, "accuracy", ["train_accuracy", "val_accuracy"]))
    for ax, kind, keys in panels:
        names = keys + (extra if kind == "accuracy" else [])
        for key in names:
            ys = [m.get(key) for m in epochs]
            if any(y is not None for y in ys):
                ax.plot(x, ys, marker="o", markersize=4, label=key)
        ylabel = ", ".join([kind, *extra]) if kind == "accuracy" else kind
        label(ax, f"{ylabel} per epoch", "epoch", ylabel, integer_x=True)
    if best is not None:
        key, epoch, value = best
        for ax in (loss_ax, score_ax):
            ax.axvline(epoch, color="grey", ls=":", lw=1)
        mark_best(loss_ax if "loss" in key else score_ax, epoch, value, f"best: epoch {epoch} ({key} {value:.4g})")
    for ax in (loss_ax, score_ax):
        if ax.lines:
            ax.legend(loc="best", fontsize=8)
    return save(fig, path)


def mistake_title(true: str, predicted: str, probability: float) -> str:
    """'true: 3' over 'predicted: 8 (0.62)', each wrapped to the column (long class names included)."""
    return wrap(f"true: {true}", TITLE_CHARS) + "\n" + wrap(f"predicted: {predicted} ({probability:.2f})", TITLE_CHARS)


def plot_mistakes(mistakes: list[tuple[Path, str, str, float]], channels: int, path: Path) -> Figure:
    """A grid of misclassified images, each titled with its true and predicted class and the model's
    probability for the predicted one. Rows are as tall as the longest title needs."""
    n = max(1, len(mistakes))
    cols = min(6, n)
    rows = (n + cols - 1) // cols
    titles = [mistake_title(true, pred, prob) for _, true, pred, prob in mistakes]
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    fig, axes = new_figure(2.2 * cols, (2.0 + 0.16 * lines) * rows + 0.5, rows, cols)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image_path, *_), title in zip(axes.flat, mistakes, titles, strict=False):
        image = load_image(image_path, channels)
        ax.imshow(image[:, :, 0] if channels == 1 else image, cmap="gray" if channels == 1 else None)
        ax.set_title(title, fontsize=8)
    if not mistakes:
        say(axes.flat[0], "no mistakes")
    fig.suptitle(f"Mistakes, most confident first ({len(mistakes)} shown)")
    return save(fig, path)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def html_plots(folder: Path, plots: list[str]) -> str:
    """The PNG plots inline (base64), each under its name as a heading: the page is one file
    that can be mailed or attached to a ticket."""
    return "".join(
        f"<h2>{html.escape(p[:-4].replace('_', ' ').capitalize())}</h2><img alt='{p}' "
        f"src='data:image/png;base64,{base64.b64encode((folder / p).read_bytes()).decode()}'>"
        for p in plots
    )


def html_context(context: dict) -> str:
    return "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in context.items())


def write_report(
    out: Path,
    title: str,
    metrics: dict,
    classes: list[str],
    epochs: list[dict],
    mistakes: list[tuple[Path, str, str, float]] | None,
    channels: int,
    context: dict,
    monitor: tuple[str, str] | None = None,
) -> Path:
    """``mistakes`` None: the inputs are not images (texts), so there is no picture grid of them.
    ``monitor``: (train.monitor, "max" | "min"), which picks the best epoch marked on the curves."""
    out.mkdir(parents=True, exist_ok=True)
    plot_confusion(metrics["confusion_matrix"], classes, out / "confusion_matrix.png")
    plots = ["confusion_matrix.png"]
    if mistakes is not None:
        plot_mistakes(mistakes, channels, out / "mistakes.png")
        plots.append("mistakes.png")
    if epochs:
        plot_curves(epochs, out / "curves.png", monitor)
        plots.insert(0, "curves.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    summary = markdown_table(
        ["metric", "value"],
        [
            [_name(k, metrics), f"{metrics[k]:.4f}"]
            for k in (
                "accuracy",
                "top5",
                "macro_precision",
                "macro_recall",
                "macro_f1",
                "weighted_precision",
                "weighted_recall",
                "weighted_f1",
            )
        ],
    )
    per_class = markdown_table(
        ["class", "precision", "recall", "f1", "support"],
        [
            [name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"]]
            for name, m in metrics["per_class"].items()
        ],
    )
    info = "\n".join(f"- **{k}**: {v}" for k, v in context.items())
    md = (
        f"# {title}\n\n{info}\n- **samples**: {metrics['num_samples']}\n\n## Summary\n\n{summary}\n\n"
        f"## Per class\n\n{per_class}\n\n"
        + "".join(f"## {p[:-4].replace('_', ' ').capitalize()}\n\n![{p}]({p})\n\n" for p in plots)
    )
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(_html(title, context, metrics, plots, out))
    return out / "report.md"


def _name(key: str, metrics: dict) -> str:
    return top5_label(metrics["topk"], len(metrics["per_class"])) if key == "top5" else key


def _html(title: str, context: dict, metrics: dict, plots: list[str], folder: Path) -> str:
    esc = html.escape

    def rows(items):
        return "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in items)

    summary = rows([[_name(k, metrics), f"{metrics[k]:.4f}"] for k in ("accuracy", "top5", "macro_f1", "weighted_f1")])
    per_class = rows(
        [
            [n, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"]]
            for n, m in metrics["per_class"].items()
        ]
    )
    images, ctx = html_plots(folder, plots), html_context(context)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%;border:1px solid #eee}}</style></head>
<body><h1>{esc(title)}</h1><ul>{ctx}<li><b>samples</b>: {metrics["num_samples"]}</li></ul>
<h2>Summary</h2><table><tr><th>metric</th><th>value</th></tr>{summary}</table>
<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>f1</th><th>support</th></tr>
{per_class}</table>{images}</body></html>"""
