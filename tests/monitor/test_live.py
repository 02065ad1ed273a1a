"""The server-side monitor in-process, on the real digits model: sampling, keep_inputs, and a
close() that writes every row."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import numpy as np
from PIL import Image
from prometheus_client import CollectorRegistry

from modelcycle.config import MonitorSection
from modelcycle.monitor.live import start_monitor
from modelcycle.serve.models import load_models


def _preprocessed(served, images: list[np.ndarray]) -> np.ndarray:
    blobs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        blobs.append(buffer.getvalue())
    return np.stack([served.preprocess(blob) for blob in blobs])


def test_sampling_keep_inputs_and_a_graceful_close(digits_run: Path, train_images, tmp_path: Path):
    served = load_models([str(digits_run)], "torch", 10**7)
    model = served[0]
    images = _preprocessed(model, train_images[:40])
    logits = model.predictor(images)
    cfg = MonitorSection(dir=str(tmp_path / "all"), keep_inputs=True, window=20)
    monitor = start_monitor(served, cfg)
    registry = CollectorRegistry()
    monitor.attach(registry)
    for start in range(0, 40, 4):
        monitor.observe(model, images[start : start + 4], logits[start : start + 4], 0.002)
    monitor.close()  # what a SIGTERM does: everything queued is committed
    with sqlite3.connect(tmp_path / "all" / "predictions.db") as conn:
        rows = conn.execute("SELECT label, input, request FROM predictions ORDER BY id").fetchall()
    assert [r[0] for r in rows] == logits.argmax(1).tolist()
    assert len({r[2] for r in rows}) == 10  # ten requests of four images
    # the stored picture is the model's view of the input: it preprocesses to the same tensor
    again = model.preprocess(rows[0][1])
    assert np.abs(again - images[0]).max() < 0.01
    assert registry.get_sample_value("modelcycle_monitor_windows_total", {"model": "digits"}) >= 1
    assert registry.get_sample_value("modelcycle_drift_psi", {"model": "digits", "feature": "brightness"}) >= 0

    sampled = MonitorSection(dir=str(tmp_path / "some"), sample_rate=0.25)
    monitor = start_monitor(served, sampled)
    many, many_logits = np.repeat(images, 50, axis=0), np.repeat(logits, 50, axis=0)  # 2,000 images
    for start in range(0, len(many), 20):
        monitor.observe(model, many[start : start + 20], many_logits[start : start + 20], 0.001)
    monitor.close()
    with sqlite3.connect(tmp_path / "some" / "predictions.db") as conn:
        count, kept = conn.execute("SELECT count(*), count(input) FROM predictions").fetchone()
    assert 400 <= count <= 600 and kept == 0  # binomial(2000, 0.25): 500 +- 19


def test_rows_beyond_max_pending_are_dropped_and_counted(digits_run: Path, train_images, tmp_path: Path):
    served = load_models([str(digits_run)], "torch", 10**7)
    images = _preprocessed(served[0], train_images[:4])
    monitor = start_monitor(served, MonitorSection(dir=str(tmp_path), max_pending=3))
    registry = CollectorRegistry()
    monitor.attach(registry)
    monitor.observe(served[0], images, served[0].predictor(images), 0.001)  # 4 images > 3 may wait
    monitor.observe(served[0], images[:2], served[0].predictor(images[:2]), 0.001)
    monitor.close()
    assert registry.get_sample_value("modelcycle_monitor_dropped_total") == 4
    with sqlite3.connect(tmp_path / "predictions.db") as conn:
        assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 2
