"""The evaluation report: report.md, a self-contained report.html and PNG plots."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from modelcycle.data.images import load_image  # noqa: E402
from modelcycle.evaluation.metrics import top5_label  # noqa: E402


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path) -> None:
    m = np.asarray(matrix)
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 30:
        threshold = m.max() / 2 if m.size else 0
        for (i, j), value in np.ndenumerate(m):
            ax.text(
                j, i, str(value), ha="center", va="center", fontsize=8, color="white" if value > threshold else "black"
            )
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(epochs: list[dict], path: Path) -> None:
    """Loss and every other per-epoch metric, train and val on the same axes."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = [m["epoch"] for m in epochs]
    for ax, kind in zip(axes, ("loss", "accuracy"), strict=True):
        for split in ("train", "val"):
            key = f"{split}_{kind}"
            ys = [m.get(key) for m in epochs]
            if any(y is not None for y in ys):
                ax.plot(x, ys, marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(kind)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_mistakes(mistakes: list[tuple[Path, str, str, float]], channels: int, path: Path) -> None:
    """A grid of misclassified images titled 'true -> predicted (p)'."""
    n = max(1, len(mistakes))
    cols = min(6, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image_path, true, pred, prob) in zip(axes.flat, mistakes, strict=False):
        image = load_image(image_path, channels)
        ax.imshow(image[:, :, 0] if channels == 1 else image, cmap="gray" if channels == 1 else None)
        ax.set_title(f"{true} → {pred}\n({prob:.2f})", fontsize=8)
    if not mistakes:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
) -> Path:
    """``mistakes`` None: the inputs are not images (texts), so there is no picture grid of them."""
    out.mkdir(parents=True, exist_ok=True)
    plot_confusion(metrics["confusion_matrix"], classes, out / "confusion_matrix.png")
    plots = ["confusion_matrix.png"]
    if mistakes is not None:
        plot_mistakes(mistakes, channels, out / "mistakes.png")
        plots.append("mistakes.png")
    if epochs:
        plot_curves(epochs, out / "curves.png")
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
