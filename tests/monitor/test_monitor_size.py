"""The ``size`` feature (sqrt(width * height) of the file as sent): served digits at their own
size, then upscaled 4x, then as tensors (no size); and a log written before the column existed."""

from __future__ import annotations

import base64
import io
import re
import sqlite3
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from monitor_images import b64_png
from PIL import Image

from modelcycle.config import MonitorSection
from modelcycle.monitor import log, watch
from modelcycle.serve.models import load_models
from modelcycle.serve.process import ServerProcess

WINDOW = 100


def _png(image: np.ndarray) -> bytes:
    return base64.b64decode(b64_png(image))


def _upscaled(image: np.ndarray) -> str:
    """The same digit as a PNG four times as wide and high (a client that sends bigger photos)."""
    buffer = io.BytesIO()
    picture = Image.fromarray(image)
    picture.resize((picture.width * 4, picture.height * 4), Image.Resampling.BICUBIC).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _infer(server: ServerProcess, tensor: dict) -> None:
    response = httpx.post(server.url + "/v2/models/digits/infer", json={"inputs": [tensor]}, timeout=60)
    assert response.status_code == 200, response.text


def _gauge(metrics: str, series: str) -> float:
    match = re.search(re.escape(series) + r" ([0-9.e+-]+|NaN)", metrics)
    assert match, series
    return float(match.group(1))


def _windows_scored(server: ServerProcess, count: int) -> str:
    for _ in range(600):
        metrics = httpx.get(server.url + "/metrics").text
        if f'modelcycle_monitor_windows_total{{model="digits"}} {count}.0' in metrics:
            return metrics
        time.sleep(0.1)
    raise AssertionError(f"the monitor did not score {count} windows")


@pytest.fixture(scope="module")
def sized(digits_run: Path, train_images: list[np.ndarray], tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("size-log")
    served = load_models([str(digits_run)], "torch", 10**7)[0]
    out = {"folder": folder}
    with ServerProcess([digits_run], "--monitor", folder, f"monitor.window={WINDOW}") as server:
        for start in range(0, WINDOW, 20):  # window 0: /v1/predict, the digits as they are (8 x 8)
            body = {"images": [b64_png(image) for image in train_images[start : start + 20]]}
            assert httpx.post(server.url + "/v1/predict", json=body, timeout=60).status_code == 200
        for start in range(WINDOW, 2 * WINDOW, 20):  # window 1: /v2 image files, 4x upscaled (32 x 32)
            files = [_upscaled(image) for image in train_images[start : start + 20]]
            _infer(server, {"name": "image_bytes", "datatype": "BYTES", "shape": [len(files)], "data": files})
        out["metrics_upscaled"] = _windows_scored(server, 2)
        for start in range(2 * WINDOW, 3 * WINDOW, 50):  # window 2: /v2 tensors, no file and so no size
            batch = np.stack([served.preprocess(_png(image)) for image in train_images[start : start + 50]])
            _infer(
                server,
                {"name": "input", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()},
            )
        out["metrics_tensors"] = _windows_scored(server, 3)
    out["summary"] = watch.report(folder, MonitorSection(window=WINDOW), out=tmp_path_factory.mktemp("size-report"))
    return out


def test_the_log_holds_the_size_as_sent_and_null_for_tensors(sized):
    with sqlite3.connect(sized["folder"] / log.DB) as conn:
        sizes = [row[0] for row in conn.execute("SELECT size FROM predictions ORDER BY id")]
    assert sizes == [8.0] * WINDOW + [32.0] * WINDOW + [None] * WINDOW


def test_upscaled_images_drift_in_size_within_one_window_and_tensors_leave_it_unmeasured(sized):
    calm, upscaled, tensors = sized["summary"]["windows"]
    assert calm["features"]["size"]["drift"] == "ok" and calm["features"]["size"]["psi"] == 0
    assert "size" not in calm["drifted"] + calm["warned"]
    assert "size" in upscaled["drifted"] and upscaled["features"]["size"]["mean"] == 32.0
    assert upscaled["features"]["size"]["reference_mean"] == 8.0
    assert tensors["features"]["size"] == {
        "values": 0,
        "reference_mean": 8.0,
        "drift": "unmeasured",
        "reason": "0 values < 50: too few to test",
    }
    assert "size" not in tensors["drifted"] + tensors["warned"]
    assert tensors["features"]["brightness"]["drift"] != "unmeasured"  # the other features still measured


def test_the_live_gauges_name_size_and_show_no_value_when_it_is_unmeasured(sized):
    upscaled, tensors = sized["metrics_upscaled"], sized["metrics_tensors"]
    assert _gauge(upscaled, 'modelcycle_drift_psi{feature="size",model="digits"}') >= 0.2
    assert _gauge(upscaled, 'modelcycle_drift_level{model="digits",test="size"}') == 2
    assert np.isnan(_gauge(tensors, 'modelcycle_drift_level{model="digits",test="size"}'))
    assert np.isnan(_gauge(tensors, 'modelcycle_drift_psi{feature="size",model="digits"}'))


# the predictions table as the server wrote it before the size column existed
OLD_SCHEMA = """
CREATE TABLE predictions (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL,
    request INTEGER NOT NULL, latency_ms REAL NOT NULL, label INTEGER NOT NULL, confidence REAL NOT NULL,
    brightness REAL, contrast REAL, sharpness REAL, horizontal_edges REAL, red REAL, green REAL, blue REAL,
    embedding BLOB, input BLOB
);
CREATE INDEX predictions_model ON predictions (model, id);
CREATE TABLE profiles (model TEXT, version TEXT, profile TEXT NOT NULL, PRIMARY KEY (model, version));
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '1');
INSERT INTO predictions VALUES
    (1, 1.0, 'digits', 'abc', 7, 2.5, 3, 0.9, 0.1, 0.2, 0.3, 0.5, NULL, NULL, NULL, NULL, NULL);
"""


def test_a_log_of_the_previous_version_opens_and_takes_rows(tmp_path: Path):
    with sqlite3.connect(log.db_path(tmp_path)) as old:
        old.executescript(OLD_SCHEMA)
    reader = log.open_log(tmp_path)  # `modelcycle monitor` on the old log
    assert np.isnan(log.read_rows(reader, "digits")["size"]).all()
    reader.close()
    writer = log.create(tmp_path, {})  # a new server appending to it
    row = (2.0, "digits", "abc", 8, 2.5, 4, 0.8, 0.1, 0.2, 0.3, 0.5, None, None, None, 64.0, None, None)
    log.insert(writer, [row])
    rows = log.read_rows(writer, "digits")
    assert rows["label"].tolist() == [3, 4] and np.isnan(rows["size"][0]) and rows["size"][1] == 64.0
    assert writer.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (log.SCHEMA_VERSION,)
    writer.close()
