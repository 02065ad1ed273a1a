"""evaluate and predict on a run trained once for this module (API level)."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import class_image, make_image_folder, tiny_overrides
from modelcycle import api
from modelcycle.config import load_config
from modelcycle.data.manifest import PreparedData
from modelcycle.errors import DataError, UserError
from modelcycle.evaluation.crossval import crossval
from modelcycle.evaluation.inference import preprocess
from modelcycle.packages import load_model

REPORT_KEYS = {"accuracy", "top5", "macro_f1", "weighted_f1", "per_class"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, prepared data folder) of a 6-epoch run with train/val/test splits."""
    root = tmp_path_factory.mktemp("evaluate")
    images = make_image_folder(root / "images", per_class=16)
    api.prepare(images, root / "data", val=0.25, test=0.25, seed=0)
    config = load_config(None, tiny_overrides(root / "data", root / "runs", name="evalrun", train__epochs=6))
    run = api.train(config, progress=False)
    return run.path, root / "data"


def test_evaluate_writes_the_report(trained):
    run_dir, _ = trained
    shutil.rmtree(run_dir / "report", ignore_errors=True)
    metrics = api.evaluate(run_dir)
    report = run_dir / "report"
    for name in ("report.md", "report.html", "confusion_matrix.png", "curves.png", "mistakes.png", "metrics.json"):
        assert (report / name).is_file(), name
    saved = json.loads((report / "metrics.json").read_text())
    assert set(saved) >= REPORT_KEYS
    assert saved["accuracy"] == metrics["accuracy"] and saved["split"] == "val"
    assert set(saved["per_class"]) == {"class_0", "class_1", "class_2"}
    assert sum(c["support"] for c in saved["per_class"].values()) == saved["num_samples"] == 12
    assert metrics["report"] == str(report / "report.html")
    html = (report / "report.html").read_text()
    sources = re.findall(r"<img[^>]*\ssrc='([^']+)'", html)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert base64.b64decode(sources[0].split(",", 1)[1]).startswith(b"\x89PNG")


def test_evaluate_metrics_match_the_model(trained):
    run_dir, data_dir = trained
    metrics = api.evaluate(run_dir, split="test")
    model, manifest = load_model(run_dir)
    items = PreparedData.open(data_dir).split("test")
    with torch.no_grad():  # computed here from the PyTorch model, not through evaluate's own path
        probs = torch.softmax(model(preprocess(manifest, items)), dim=1).numpy()
    labels = np.array([label for _, label in items])
    assert metrics["split"] == "test" and metrics["num_samples"] == len(items) == 12
    assert metrics["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    assert metrics["accuracy"] >= 0.75  # the tiny model did learn the squares
    assert metrics["top5"] == 1.0  # three classes


def test_evaluate_on_a_manifest(trained, tmp_path: Path):
    run_dir, data_dir = trained
    manifest = data_dir / "train.txt"
    metrics = api.evaluate(run_dir, data=manifest)
    assert metrics["split"] == str(manifest) and metrics["num_samples"] == 24


def test_evaluate_a_package_alone(trained, tmp_path: Path):
    run_dir, data_dir = trained
    package = tmp_path / "package"
    shutil.copytree(run_dir / "model", package)
    # a package names the data folder it was trained on, so its val split is found
    assert api.evaluate(package)["num_samples"] == len(PreparedData.open(data_dir).split("val"))
    manifest_file = package / "modelcycle.json"
    manifest = json.loads(manifest_file.read_text())
    del manifest["data_root"]  # a package from elsewhere: the data must be named
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="--data"):
        api.evaluate(package)
    metrics = api.evaluate(package, data=data_dir / "val.txt")
    assert metrics["num_samples"] == 12
    assert (package / "report" / "report.html").is_file()
    assert not (package / "report" / "curves.png").exists()  # no training history in a package


def test_evaluate_missing_split_says_how_to_make_it(trained, tmp_path: Path):
    run_dir, data_dir = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (data_dir / "test.txt").rename(tmp_path / "test.txt")
    try:
        with pytest.raises(DataError) as info:
            api.evaluate(copy, split="test")
    finally:
        (tmp_path / "test.txt").rename(data_dir / "test.txt")
    assert "test.txt" in str(info.value) and "--test" in str(info.value)


def test_evaluate_a_folder_that_is_not_a_run(tmp_path: Path):
    with pytest.raises(UserError) as info:
        api.evaluate(tmp_path)
    assert str(tmp_path) in str(info.value) and "run folder" in str(info.value)


def test_predict_new_images(trained, tmp_path: Path):
    run_dir, _ = trained
    rng = np.random.default_rng(123)  # pictures the model has never seen
    paths = []
    for label in range(3):
        path = tmp_path / f"new_{label}.png"
        class_image(label, rng).save(path)
        paths.append(path)
    results = api.predict(run_dir, paths, topk=2)
    assert [r["path"] for r in results] == [str(p) for p in paths]
    assert [r["label"] for r in results] == ["class_0", "class_1", "class_2"]
    for r in results:
        assert len(r["topk"]) == 2
        assert r["topk"][0] == {"label": r["label"], "probability": r["probability"]}
        assert r["topk"][0]["probability"] >= r["topk"][1]["probability"]
        assert 0 < r["probability"] <= 1
    everything = api.predict(run_dir, paths[:1], topk=10)[0]["topk"]
    assert len(everything) == 3 and sum(t["probability"] for t in everything) == pytest.approx(1.0, abs=1e-5)


def test_predict_bad_images(trained, tmp_path: Path):
    run_dir, _ = trained
    with pytest.raises(DataError, match="does not exist") as info:
        api.predict(run_dir, [tmp_path / "missing.png"])
    assert "missing.png" in str(info.value)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError) as info:
        api.predict(run_dir, [corrupt])
    assert str(corrupt) in str(info.value)


def test_crossval_refuses_impossible_folds(trained):
    run_dir, data_dir = trained
    config = load_config(run_dir / "config.yaml")
    with pytest.raises(UserError, match="at least 2 folds"):
        crossval(config, folds=1, progress=False)
    with pytest.raises(UserError, match="fewer than --folds 20"):
        crossval(config, folds=20, progress=False)
