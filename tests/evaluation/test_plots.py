"""The report's plots read at a glance: whole-number epoch ticks, labelled axes and titles, the best
epoch starred, and mistake titles that say which class is which and never overlap. Each figure is
the one the plotting function saved as PNG, read back through matplotlib."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from helpers import make_image_folder
from modelcycle.evaluation.plots import BEST
from modelcycle.evaluation.report import plot_confusion, plot_curves, plot_mistakes

PNG = b"\x89PNG\r\n\x1a\n"


def integer_ticks(ax: Axes) -> list[float]:
    """The x ticks inside the view after a draw (what the PNG shows), asserting they are whole numbers."""
    ax.figure.canvas.draw()
    low, high = sorted(ax.get_xlim())
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    return ticks


def best_marker(ax: Axes) -> tuple[float, float, str]:
    (line,) = [line for line in ax.get_lines() if line.get_gid() == BEST]
    x, y = line.get_data()
    return float(x[0]), float(y[0]), line.get_label()


def assert_labelled(ax: Axes) -> None:
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())


def epochs(count: int) -> list[dict]:
    """val_accuracy peaks at epoch 3; val_loss is lowest at epoch 4."""
    accuracy = [0.5, 0.7, 0.9, 0.85, 0.8, 0.8, 0.75][:count]
    loss = [1.0, 0.6, 0.4, 0.3, 0.5, 0.6, 0.7][:count]
    return [
        {"epoch": e + 1, "train_loss": loss[e] * 0.9, "val_loss": loss[e], "val_accuracy": accuracy[e], "val_top5": 1.0}
        for e in range(count)
    ]


@pytest.mark.parametrize("count", [3, 7])
def test_curves_have_whole_epoch_ticks_labels_and_the_best_epoch_starred(tmp_path: Path, count: int):
    fig = plot_curves(epochs(count), tmp_path / "curves.png", ("val_accuracy", "max"))
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG)
    loss_ax, score_ax = fig.axes
    for ax in (loss_ax, score_ax):
        assert_labelled(ax)
        assert ax.get_xlabel() == "epoch"
        assert integer_ticks(ax)
    assert best_marker(score_ax) == (3, 0.9, "best: epoch 3 (val_accuracy 0.9)")
    assert BEST in [t.get_text().split(":")[0] for t in score_ax.get_legend().get_texts()]


def test_the_best_epoch_follows_the_run_monitor(tmp_path: Path):
    """A run that monitors val_loss keeps epoch 4 as best.pt: the star goes there, on the loss panel;
    a metric on neither panel (val_top5) gets its own line on the right."""
    fig = plot_curves(epochs(7), tmp_path / "curves.png", ("val_loss", "min"))
    assert best_marker(fig.axes[0]) == (4, 0.3, "best: epoch 4 (val_loss 0.3)")
    fig = plot_curves(epochs(7), tmp_path / "curves.png", ("val_top5", "max"))
    assert best_marker(fig.axes[1])[:2] == (1, 1.0)  # the first of equals, as the trainer keeps it
    assert "val_top5" in [line.get_label() for line in fig.axes[1].get_lines()]
    # without a monitor: the trainer's default, val_accuracy
    assert best_marker(plot_curves(epochs(7), tmp_path / "c.png").axes[1])[:2] == (3, 0.9)


def test_confusion_matrix_is_labelled(tmp_path: Path):
    fig = plot_confusion([[3, 1], [0, 4]], ["cat", "dog"], tmp_path / "confusion.png")
    assert_labelled(fig.axes[0])
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == ("predicted", "true")


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def assert_no_overlap(fig: Figure) -> None:
    """No two mistake titles overlap, no title covers another image, and all lie inside the figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    shown = [ax for ax in fig.axes if ax.images]
    titles = [ax.title.get_window_extent(renderer) for ax in shown]
    images = [ax.get_window_extent(renderer) for ax in shown]
    for (i, a), (j, b) in itertools.combinations(enumerate(titles), 2):
        assert not overlaps(a, b), (shown[i].get_title(), shown[j].get_title())
    for i, title in enumerate(titles):
        for j, image in enumerate(images):
            assert i == j or not overlaps(title, image), (shown[i].get_title(), j)
        assert title.x0 >= 0 and title.y1 <= fig.bbox.y1 and title.x1 <= fig.bbox.x1, shown[i].get_title()


@pytest.mark.parametrize(
    "names",
    [
        ["cat", "dog", "owl"],
        ["granny smith apple, slightly bruised", "Pink Lady", "a_very_long_class_name_without_any_spaces_at_all"],
    ],
)
def test_mistake_titles_are_labelled_and_never_overlap(tmp_path: Path, names: list[str]):
    images = make_image_folder(tmp_path / "images", per_class=4)
    rng = np.random.default_rng(0)
    mistakes = [
        (images / f"class_{k % 3}" / f"00{k // 3}.png", names[k % 3], names[(k + 1) % 3], float(rng.uniform(0.3, 1)))
        for k in range(12)
    ]
    fig = plot_mistakes(mistakes, 3, tmp_path / "mistakes.png")
    assert (tmp_path / "mistakes.png").read_bytes().startswith(PNG)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 12
    first = shown[0].get_title().replace("\n", " ")
    assert first.startswith(f"true: {names[0][:10]}") and "predicted: " in first
    assert first.endswith(f"({mistakes[0][3]:.2f})")
    assert_no_overlap(fig)


def test_no_mistakes_says_so(tmp_path: Path):
    fig = plot_mistakes([], 3, tmp_path / "mistakes.png")
    assert "no mistakes" in [t.get_text() for ax in fig.axes for t in ax.texts]
