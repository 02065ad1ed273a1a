"""The pictures of a run that more than one layer draws: the confusion matrix, which a classifier
shows in TensorBoard each validation pass (``tasks/media.py``, layer 3) and its evaluation report
saves as ``confusion_matrix.png`` (``evaluation/report.py``, layer 4). It lives here, in the
tracking layer (2), because tracking is what shows a run's pictures and both of those layers may
import it; ``evaluation/plots.py`` (the rest of the reports' look) sits above tasks, which may not
import it.

matplotlib is imported when a figure is drawn, not with this module: a training run imports this
through ``tasks/media.py`` and must not pay matplotlib's import when nothing shows its pictures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INCH_PER_CLASS = 0.5  # a row and a column of the matrix
COUNTED_CLASSES = 30  # up to this many classes, each cell shows its count; more leave it no room
TICK_POINTS = 10.0  # matplotlib's own size for tick labels, used while a row has room for it


def blank_figure(width: float, height: float) -> Figure:
    """A figure that lays itself out (constrained layout: titles, labels and legends never overlap),
    with an Agg canvas so it can be drawn and its text measured before it is saved. Made with
    ``matplotlib.figure.Figure``, not pyplot: no global figure list to leak from a long-lived server."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def confusion_figure(matrix, classes: list[str], max_inches: float | None = None) -> Figure:
    """The confusion matrix (rows true, columns predicted; a nested list or any array), each cell's
    count written in it while there are at most :data:`COUNTED_CLASSES` classes.

    ``max_inches`` bounds the figure's side (TensorBoard draws one every epoch, for up to 100 classes);
    when it binds, the class names shrink with the rows so that they do not run into each other."""
    m = np.asarray(matrix)
    n = len(classes)
    size = max(4.0, INCH_PER_CLASS * n + 2)  # + 2: the class names and axis labels
    if max_inches is not None:
        size = min(size, max_inches)
    tick_points = min(TICK_POINTS, 60 * (size - 2) / max(n, 1))  # 60 points: 5/6 of an inch (72 points)
    fig = blank_figure(size, size)
    ax = fig.add_subplot()
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=tick_points)
    ax.set_yticks(range(n), classes, fontsize=tick_points)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= COUNTED_CLASSES:
        threshold = m.max() / 2 if m.size else 0  # white on the dark cells, black on the light ones
        for (i, j), value in np.ndenumerate(m):
            dark = value > threshold
            ax.text(j, i, str(int(value)), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_title("Confusion matrix")
    return fig
