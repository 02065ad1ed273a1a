"""The report: report.md, a self-contained report.html and the PNG plots."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_image_folder
from modelcycle.evaluation.metrics import classification_metrics
from modelcycle.evaluation.report import write_report

CLASSES = ["cat", "dog", "owl"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def inputs(tmp_path: Path):
    images = make_image_folder(tmp_path / "images")
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4], [0.1, 0.1, 0.8]]
    )
    metrics = classification_metrics(labels, probs, CLASSES)
    mistakes = [
        (images / "class_0" / "001.png", "cat", "dog", 0.7),
        (images / "class_2" / "000.png", "owl", "cat", 0.5),
    ]
    epochs = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "val_loss": 1.2 / e,
            "train_accuracy": 0.5 + e / 10,
            "val_accuracy": 0.4 + e / 10,
            "epoch_time_s": 0.1,
        }
        for e in (1, 2, 3)
    ]
    return metrics, mistakes, epochs


def _img_sources(html: str) -> list[str]:
    return re.findall(r"<img[^>]*\ssrc=['\"]([^'\"]+)['\"]", html)


def test_report_files(inputs, tmp_path: Path):
    metrics, mistakes, epochs = inputs
    out = tmp_path / "report"
    md = write_report(out, "Evaluation of demo", metrics, CLASSES, epochs, mistakes, 3, {"model": "simple_cnn"})
    assert md == out / "report.md"
    for name in ("confusion_matrix.png", "curves.png", "mistakes.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG), name
        with Image.open(out / name) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    saved = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "top5", "macro_f1", "weighted_f1", "per_class"} <= set(saved)
    assert saved["accuracy"] == pytest.approx(4 / 6)
    assert list(saved["per_class"]) == CLASSES


def test_markdown_has_tables_and_plots(inputs, tmp_path: Path):
    metrics, mistakes, epochs = inputs
    out = tmp_path / "report"
    write_report(out, "Evaluation of demo", metrics, CLASSES, epochs, mistakes, 3, {"model": "simple_cnn"})
    md = (out / "report.md").read_text()
    assert md.startswith("# Evaluation of demo")
    assert "| accuracy | 0.6667 |" in md
    assert "| dog | 0.667 | 1.000 | 0.800 | 2 |" in md
    for name in ("curves.png", "confusion_matrix.png", "mistakes.png"):
        assert f"]({name})" in md
    assert "simple_cnn" in md and "**samples**: 6" in md


def test_html_is_self_contained(inputs, tmp_path: Path):
    metrics, mistakes, epochs = inputs
    out = tmp_path / "report"
    write_report(out, "Evaluation of <demo>", metrics, CLASSES, epochs, mistakes, 3, {"data": "val & more"})
    html = (out / "report.html").read_text()
    assert "Evaluation of &lt;demo&gt;" in html and "val &amp; more" in html  # escaped
    sources = _img_sources(html)
    assert len(sources) == 3
    embedded = set()
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        embedded.add(base64.b64decode(src.split(",", 1)[1]))
    assert embedded == {(out / n).read_bytes() for n in ("curves.png", "confusion_matrix.png", "mistakes.png")}
    assert "http://" not in html and "https://" not in html and "<link" not in html and "<script" not in html
    assert "0.6667" in html  # the summary table


def test_report_without_history_or_mistakes(inputs, tmp_path: Path):
    metrics, _, _ = inputs
    out = tmp_path / "report"
    write_report(out, "t", metrics, CLASSES, [], [], 1, {})
    assert not (out / "curves.png").exists()
    assert (out / "mistakes.png").read_bytes().startswith(PNG)
    assert len(_img_sources((out / "report.html").read_text())) == 2


def test_many_classes_confusion_matrix(tmp_path: Path):
    classes = [f"c{i}" for i in range(40)]
    labels = np.arange(40).repeat(2)
    probs = np.eye(40)[labels]
    metrics = classification_metrics(labels, probs, classes)
    write_report(tmp_path, "t", metrics, classes, [], [], 3, {})
    assert (tmp_path / "confusion_matrix.png").read_bytes().startswith(PNG)
