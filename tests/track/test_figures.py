"""The confusion matrix both TensorBoard (tasks/media.py) and the evaluation report draw, from its
one copy in track/figures.py: counts in the cells while they fit, a bounded side for TensorBoard's
many-class matrices with class names that still do not run into each other, and no matplotlib
import on the training path until a figure is drawn."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from modelcycle.tasks.media import CONFUSION_CLASSES, CONFUSION_INCHES
from modelcycle.track.figures import COUNTED_CLASSES, confusion_figure


def test_counts_are_written_in_the_cells_while_there_is_room():
    fig = confusion_figure(np.array([[3, 1], [0, 4]]), ["cat", "dog"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["3", "1", "0", "4"]
    assert [t.get_color() for t in ax.texts] == ["white", "black", "black", "white"]  # dark cells: white text
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("predicted", "true", "Confusion matrix")
    many = COUNTED_CLASSES + 1
    assert not confusion_figure(np.ones((many, many)), [str(i) for i in range(many)]).axes[0].texts


def test_tensorboard_s_many_class_matrix_stays_bounded_and_its_names_apart():
    classes = [f"class {i}" for i in range(CONFUSION_CLASSES)]
    fig = confusion_figure(np.eye(CONFUSION_CLASSES, dtype=int), classes, CONFUSION_INCHES)
    assert tuple(fig.get_size_inches()) == (CONFUSION_INCHES, CONFUSION_INCHES)
    fig.canvas.draw()
    boxes = [label.get_window_extent() for label in fig.axes[0].get_yticklabels()]
    assert all(a.y0 >= b.y1 - 0.5 or b.y0 >= a.y1 - 0.5 for a, b in zip(boxes, boxes[1:], strict=False))
    # unbounded (the report), the same matrix gets half an inch a class
    assert confusion_figure(np.eye(40, dtype=int), classes[:40]).get_size_inches()[0] == 22


def test_the_training_path_imports_matplotlib_only_to_draw():
    code = (
        "import sys, numpy as np\n"
        "import modelcycle.tasks.images, modelcycle.tasks.text_classify, modelcycle.track.figures as f\n"
        "assert 'matplotlib' not in sys.modules, 'imported with the tasks'\n"
        "f.confusion_figure(np.eye(2), ['a', 'b'])\n"
        "assert 'matplotlib' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
