"""What every PNG plot of a report shares (evaluation, tune, monitor): a figure that lays itself out
(constrained layout: titles, labels and legends never overlap), whole-number ticks for counted
things (epochs, trials, windows), one look for the best point, and a plain sentence in place of a
plot that would mislead.

Figures are made with ``matplotlib.figure.Figure``, not pyplot: no global figure list to leak
from a long-lived server, and each ``plot_*`` function can return the Figure it saved, so tests
read the very axes that went into the PNG. The blank figure and the confusion matrix live in
``track/figures.py``, a layer below, because TensorBoard draws them from a training task too.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from modelcycle.track.figures import blank_figure  # the figure every plot starts from, shared with tasks/media.py

BEST = "best"  # the gid of the best point's marker (tests and readers of the SVG find it by this)
BEST_STYLE = {
    "marker": "*",
    "markersize": 15,
    "color": "gold",
    "markeredgecolor": "black",
    "linestyle": "none",
    "zorder": 5,
}


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs) -> tuple[Figure, np.ndarray]:
    """:func:`blank_figure` with a ``rows x cols`` array of axes."""
    fig = blank_figure(width, height)
    return fig, fig.subplots(rows, cols, squeeze=False, **kwargs)


def label(ax: Axes, title: str, xlabel: str, ylabel: str, integer_x: bool = False) -> None:
    """Title and both axis labels; ``integer_x``: the x axis counts things (epoch 2.5 does not exist)."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def mark_best(ax: Axes, x: float, y: float, text: str) -> None:
    """A gold star at the best point, named in the legend."""
    ax.plot([x], [y], label=text, gid=BEST, **BEST_STYLE)


def legend_outside(ax: Axes, **kwargs) -> None:
    """The legend right of the axes, where it cannot cover a line however many there are."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8, **kwargs)


def say(ax: Axes, text: str, width: int = 60) -> None:
    """A plain sentence instead of a plot (axes hidden): for when a plot would mislead."""
    ax.axis("off")
    ax.text(0.5, 0.5, textwrap.fill(text, width), ha="center", va="center", transform=ax.transAxes)


def wrap(text: str, width: int) -> str:
    """``text`` on lines of at most ``width`` characters (long words are cut, not left to overflow)."""
    return textwrap.fill(text, width, break_long_words=True) or text


def save(fig: Figure, path: Path, dpi: int = 100) -> Figure:
    fig.savefig(path, dpi=dpi)
    return fig
