"""End to end through the installed ``modelcycle`` command, each call a fresh process:
prepare -> train -> evaluate -> predict -> inspect -> crossval, and every kind of bad input,
which must end with exit code 2, one clear message (what, where, what to do) and no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import (
    LINEAR_MODEL,
    assert_mentions,
    assert_user_error,
    class_image,
    make_image_folder,
    read_jsonl,
    run_cli,
)

RECIPE = """\
run:
  name: cli
data:
  image_size: 16
  hflip: false
  color_jitter: 0.0
  crop_scale: [0.9, 1.0]
  workers: 0
model:
  name: simple_cnn
  args: {width: 8, dropout: 0.0}
train:
  epochs: 6
  batch_size: 8
  lr: 0.01
  device: cpu
  log_every: 2
"""
CLASSES = ["class_0", "class_1", "class_2"]


def _ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _fast(data: Path, runs: Path, name: str, *more: str) -> list[str]:
    """Overrides for a quick training run (no recipe file, no worker processes)."""
    return [
        f"data.root={data}",
        f"run.dir={runs}",
        f"run.name={name}",
        "data.image_size=16",
        "data.workers=0",
        "model.args={width: 8}",
        "train.epochs=2",
        "train.batch_size=8",
        "train.device=cpu",
        *more,
    ]


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> dict[str, Path]:
    """prepare and train through the CLI once; later tests use the run."""
    root = tmp_path_factory.mktemp("cli")
    images = make_image_folder(root / "images")
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE)
    prep = _ok(run_cli("prepare", images, "--out", root / "data", "--val", "0.2", "--seed", "0"))
    train = _ok(run_cli("train", recipe, f"data.root={root / 'data'}", f"run.dir={root / 'runs'}"))
    return {
        "root": root,
        "images": images,
        "data": root / "data",
        "recipe": recipe,
        "run": root / "runs" / "cli",
        "prepare_stderr": prep.stderr,
        "train_stderr": train.stderr,
    }


# ---------------------------------------------------------------- the normal flow


def test_prepare_writes_the_split(flow):
    data = flow["data"]
    for name in ("train.txt", "val.txt", "classes.txt", "stats.json", "rejected.txt"):
        assert (data / name).is_file(), name
    assert (data / "classes.txt").read_text().split() == CLASSES
    assert len((data / "train.txt").read_text().splitlines()) == 30
    assert_mentions(flow["prepare_stderr"], "36 images", "0 rejected", *CLASSES)


def test_train_writes_the_run(flow):
    run = flow["run"]
    assert (run / "config.yaml").is_file() and (run / "events.log").is_file()
    epochs = [m for m in read_jsonl(run / "metrics.jsonl") if "epoch_time_s" in m]
    assert [m["epoch"] for m in epochs] == [1, 2, 3, 4, 5, 6]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    for name in ("last.pt", "best.pt"):
        torch.load(run / "checkpoints" / name, weights_only=True)
    manifest = json.loads((run / "model" / "modelcycle.json").read_text())
    assert manifest["classes"] == CLASSES and (run / "model" / "model.safetensors").is_file()
    assert_mentions(flow["train_stderr"], "epoch 6/6", str(run / "model"))


def test_evaluate_json(flow):
    result = _ok(run_cli("evaluate", flow["run"], "--json"))
    metrics = json.loads(result.stdout)  # stdout is JSON and nothing else
    assert {"accuracy", "top5", "macro_f1", "weighted_f1", "per_class", "num_samples", "split"} <= set(metrics)
    assert metrics["split"] == "val" and metrics["num_samples"] == 6
    assert list(metrics["per_class"]) == CLASSES
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("accuracy", "top5", "macro_f1", "weighted_f1"))
    assert metrics["accuracy"] >= 2 / 3
    report = flow["run"] / "report"
    for name in ("report.md", "report.html", "confusion_matrix.png", "curves.png", "mistakes.png", "metrics.json"):
        assert (report / name).is_file(), name
    saved = json.loads((report / "metrics.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"]


def test_predict_json(flow, tmp_path: Path):
    rng = np.random.default_rng(99)
    paths = []
    for label in range(3):
        paths.append(tmp_path / f"new_{label}.jpg")
        class_image(label, rng).save(paths[-1], quality=95)
    result = _ok(run_cli("predict", flow["run"], *paths, "--json", "--topk", "2"))
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    rows = [json.loads(line) for line in lines]
    for row, path in zip(rows, paths, strict=True):
        assert set(row) == {"path", "label", "probability", "topk"}
        assert row["path"] == str(path)
        assert row["label"] in CLASSES and 0 < row["probability"] <= 1
        assert len(row["topk"]) == 2 and row["topk"][0]["label"] == row["label"]
    assert [r["label"] for r in rows] == CLASSES


def test_inspect_writes_a_png(flow, tmp_path: Path):
    out = tmp_path / "grid.png"
    result = _ok(run_cli("inspect", flow["data"], "--config", flow["recipe"], "--out", out))
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 200
    assert_mentions(result.stderr, *CLASSES, str(out))


@pytest.mark.slow
def test_crossval_two_folds(flow):
    runs = flow["root"] / "cv-runs"
    result = _ok(run_cli("crossval", *_fast(flow["data"], runs, "cv", "train.epochs=1"), "--folds", "2"))
    base = runs / "cv-crossval"
    summary = json.loads((base / "crossval.json").read_text())
    assert summary["folds"] == 2 and len(summary["per_fold"]) == 2
    # 3 classes: eval.topk=5 scores the top 3, and the table says so as evaluate's does
    assert (summary["topk"], summary["num_classes"]) == (3, 3)
    assert_mentions(result.stderr, "top5 (of 3 classes: top-3)")
    assert set(summary["mean"]) == set(summary["std"]) == {"accuracy", "top5", "macro_f1", "weighted_f1"}
    for fold in (0, 1):
        assert (base / f"fold-{fold}" / "model" / "modelcycle.json").is_file()
    assert summary["mean"]["accuracy"] == pytest.approx(np.mean([f["accuracy"] for f in summary["per_fold"]]))
    assert_mentions(result.stderr, "2-fold cross-validation", "fold 0", "fold 1")
    # eval.topk reaches the folds' scoring as it reaches evaluate's
    result = _ok(run_cli("crossval", *_fast(flow["data"], runs, "cv", "train.epochs=1", "eval.topk=2"), "--folds", "2"))
    assert json.loads((base / "crossval.json").read_text())["topk"] == 2
    assert_mentions(result.stderr, "top5 (eval.topk=2: top-2)")


@pytest.mark.slow
def test_datasets_digits(tmp_path: Path):
    out = tmp_path / "digits"
    _ok(run_cli("datasets", "digits", "--out", out))
    folders = sorted(p.name for p in out.iterdir())
    assert folders == [str(d) for d in range(10)]
    files = list(out.glob("*/*.png"))
    assert len(files) == 1797
    with Image.open(files[0]) as image:
        assert image.size == (8, 8) and image.mode == "L"


# ---------------------------------------------------------------- bad input: prepare


def test_prepare_missing_source(tmp_path: Path):
    missing = tmp_path / "no_such_folder"
    result = run_cli("prepare", missing, "--out", tmp_path / "data")
    assert_user_error(result, missing, "does not exist", "pass a folder of class folders")
    assert not (tmp_path / "data").exists()


def test_prepare_empty_folder(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    result = run_cli("prepare", tmp_path / "empty", "--out", tmp_path / "data")
    assert_user_error(result, tmp_path / "empty", "is empty", "put one folder of images per class")


def test_prepare_class_folder_without_images(tmp_path: Path):
    images = make_image_folder(tmp_path / "images")
    (images / "class_9").mkdir()
    (images / "class_9" / "readme.txt").write_text("nothing here")
    result = run_cli("prepare", images, "--out", tmp_path / "data")
    assert_user_error(result, "class_9", images, "no readable images", "add images or remove the folder")


def test_prepare_rejects_bad_files_and_carries_on(tmp_path: Path):
    images = make_image_folder(tmp_path / "images")
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(photo, quality=90)
    (images / "class_0" / "truncated.jpg").write_bytes(photo.read_bytes()[:300])
    (images / "class_1" / "zero.png").write_bytes(b"")
    (images / "class_2" / "labels.txt").write_text("cat\ndog\n")
    (images / "class_2" / "escape.jpg").symlink_to(photo)  # photo.jpg is outside the image folder
    out = tmp_path / "data"
    result = _ok(run_cli("prepare", images, "--out", out))
    rejected = dict(line.split("\t") for line in (out / "rejected.txt").read_text().splitlines())
    assert set(rejected) == {"class_0/truncated.jpg", "class_1/zero.png", "class_2/labels.txt", "class_2/escape.jpg"}
    assert "damaged" in rejected["class_0/truncated.jpg"]
    assert "empty" in rejected["class_1/zero.png"]
    assert "not an image" in rejected["class_2/labels.txt"]
    assert "outside" in rejected["class_2/escape.jpg"] and "refused" in rejected["class_2/escape.jpg"]
    listed = (out / "train.txt").read_text() + (out / "val.txt").read_text()
    assert not any(name in listed for name in rejected)
    assert len(listed.splitlines()) == 36
    assert "warning" in result.stderr
    assert_mentions(result.stderr, "4 file(s) rejected", out / "rejected.txt")


# ---------------------------------------------------------------- bad input: train


@pytest.fixture
def data_copy(flow, tmp_path: Path) -> Path:
    """A private copy of the prepared folder (its manifests point at the shared images)."""
    copy = tmp_path / "data"
    shutil.copytree(flow["data"], copy)
    return copy


def _edit_line(path: Path, number: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = new
    path.write_text("\n".join(lines) + "\n")


def test_train_manifest_with_a_bad_class_index(data_copy: Path, tmp_path: Path):
    manifest = data_copy / "train.txt"
    rel = manifest.read_text().splitlines()[2].split("\t")[0]
    _edit_line(manifest, 3, f"{rel}\t7")
    result = run_cli("train", *_fast(data_copy, tmp_path / "runs", "badindex"))
    assert_user_error(result, f"{manifest}:3", "class index 7", "out of range", "run `modelcycle prepare` again")
    assert not (tmp_path / "runs" / "badindex" / "checkpoints").exists()


def test_train_manifest_with_a_missing_file(data_copy: Path, tmp_path: Path):
    manifest = data_copy / "val.txt"
    _edit_line(manifest, 2, "class_1/vanished.png\t1")
    result = run_cli("train", *_fast(data_copy, tmp_path / "runs", "missing"))
    assert_user_error(result, f"{manifest}:2", "vanished.png", "does not exist", "fix the path")


def test_train_config_typo_fails_before_any_work(flow, tmp_path: Path):
    runs = tmp_path / "runs"
    result = run_cli("train", *_fast(flow["data"], runs, "typo"), "train.epoch=3")
    assert_user_error(result, "train.epoch", "'train.epochs'", "command line")
    assert not runs.exists()  # no run folder, let alone checkpoints


def test_train_config_typo_in_a_recipe_names_the_line(flow, tmp_path: Path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace("  lr: 0.01", "  lr: 0.01\n  wieght_decay: 0.1"))
    result = run_cli("train", recipe, f"data.root={flow['data']}", f"run.dir={tmp_path / 'runs'}")
    line = RECIPE.splitlines().index("  lr: 0.01") + 2
    assert_user_error(result, f"{recipe}:{line}", "wieght_decay", "'train.weight_decay'")
    assert not (tmp_path / "runs").exists()


def test_train_unknown_model(flow, tmp_path: Path):
    result = run_cli(
        "train", *_fast(flow["data"], tmp_path / "runs", "badmodel"), "model.name=resnet19", "model.args={}"
    )
    assert_user_error(result, "model.name", "resnet19", "did you mean 'resnet18'", "path/to/file.py:build")
    assert not (tmp_path / "runs" / "badmodel" / "checkpoints").exists()


NAN_AFTER_FIVE_STEPS = LINEAR_MODEL.replace(
    "def build(",
    """
class NaNLater(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls > 5:
                return out * float("nan")
        return out


def build_nan(in_channels, num_classes, image_size):
    return NaNLater(build(in_channels, num_classes, image_size))


def build(""",
)


def test_train_non_finite_loss_from_a_user_model(flow, tmp_path: Path):
    model_file = tmp_path / "nan_model.py"
    model_file.write_text(NAN_AFTER_FIVE_STEPS)
    run = tmp_path / "runs" / "nan"
    result = run_cli(
        "train",
        *_fast(flow["data"], tmp_path / "runs", "nan", "train.epochs=3"),
        f"model.name={model_file}:build_nan",
        "model.args={}",
    )
    last = run / "checkpoints" / "last.pt"
    assert_user_error(result, "NaN or infinite", "step 6", "epoch 2", last, "Lower train.lr")
    checkpoint = torch.load(last, weights_only=True)  # the last good checkpoint still loads
    assert checkpoint["state"]["step"] == 4 and checkpoint["state"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())


def test_train_non_finite_loss_from_a_huge_learning_rate(flow, tmp_path: Path):
    result = run_cli("train", *_fast(flow["data"], tmp_path / "runs", "hugelr"), "train.lr=1e30")
    stderr = assert_user_error(result, "NaN or infinite", "no checkpoint had been written yet", "Lower train.lr")
    assert_mentions(stderr, "at step")


def test_train_into_an_existing_run_without_resume(flow):
    run = flow["run"]
    before = (run / "checkpoints" / "last.pt").read_bytes()
    result = run_cli("train", flow["recipe"], f"data.root={flow['data']}", f"run.dir={run.parent}")
    assert_user_error(result, run, "already has checkpoints", "--resume", "--overwrite", "run.name")
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


# ---------------------------------------------------------------- bad input: predict, evaluate


def test_predict_missing_image(flow, tmp_path: Path):
    missing = tmp_path / "nope.jpg"
    result = run_cli("predict", flow["run"], missing)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert_mentions(result.stdout, missing, "error", "does not exist")
    assert_mentions(result.stderr, "0 answered, 1 failed")


def test_predict_corrupt_image(flow, tmp_path: Path):
    corrupt = tmp_path / "broken.jpg"
    good = flow["images"] / "class_0" / "000.png"
    Image.open(good).save(corrupt, quality=90)
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    result = run_cli("predict", flow["run"], corrupt, good, "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    broken, answered = map(json.loads, result.stdout.splitlines())
    assert broken["path"] == str(corrupt) and "damaged" in broken["error"]
    assert answered["path"] == str(good) and answered["label"] in CLASSES
    assert_mentions(result.stderr, "1 answered, 1 failed")


def test_predict_with_topk_zero(flow):
    image = flow["images"] / "class_0" / "000.png"
    result = run_cli("predict", flow["run"], image, "--json", "--topk", "0")
    if result.returncode == 0:  # accepted: then every answer still names a class
        row = json.loads(result.stdout)
        assert row["label"] in CLASSES and len(row["topk"]) >= 1
    else:
        assert_user_error(result, "topk")


def test_evaluate_a_folder_that_is_not_a_run(tmp_path: Path):
    folder = tmp_path / "just_a_folder"
    folder.mkdir()
    result = run_cli("evaluate", folder, "--json")
    assert_user_error(result, folder, "neither a run folder nor a model package")
    assert result.stdout == ""
