"""Distillation: the loss is the formula (checked against an independent numpy computation), a
student distilled from a real teacher run is an ordinary package that evaluate takes, an
interrupted distillation resumes to the same weights, and bad teachers or settings fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

import modelcycle
from helpers import InterruptAt, assert_mentions, assert_user_error, make_image_folder, run_cli, tiny_overrides
from modelcycle.engine import distributed
from modelcycle.engine.trainer import TrainingInterrupted
from modelcycle.errors import ConfigError, UserError
from modelcycle.tasks.distill import DistillTask

# ---------------------------------------------------------------- the loss on fixed logits


class Fixed(nn.Module):
    """Returns the same logits whatever the input (a learnable copy, so gradients can be seen)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, _images: torch.Tensor) -> torch.Tensor:
        return self.logits


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def reference_loss(student, teacher, labels, temperature, alpha, smoothing) -> tuple[float, float, float]:
    """The issue's formula written out in float64 numpy: (loss, T^2 * KL, smoothed CE)."""
    s, t, y = (np.asarray(a, dtype=np.float64) for a in (student, teacher, labels))
    n, k = s.shape
    log_p_t = _log_softmax(t / temperature)
    log_p_s = _log_softmax(s / temperature)
    kl = (np.exp(log_p_t) * (log_p_t - log_p_s)).sum() / n * temperature**2
    target = np.full((n, k), smoothing / k)
    target[np.arange(n), y.astype(int)] += 1.0 - smoothing
    ce = -(target * _log_softmax(s)).sum() / n
    return alpha * kl + (1 - alpha) * ce, kl, ce


@pytest.fixture
def logits():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(6, 5, generator=gen) * 3
    teacher = torch.randn(6, 5, generator=gen) * 3
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    return student, teacher, labels


@pytest.mark.parametrize(("temperature", "alpha", "smoothing"), [(1.0, 0.5, 0.0), (4.0, 0.9, 0.1), (2.5, 1.0, 0.0)])
def test_loss_matches_the_formula(logits, temperature, alpha, smoothing):
    student, teacher, labels = logits
    task = DistillTask(Fixed(teacher), 5, temperature=temperature, alpha=alpha, label_smoothing=smoothing)
    loss, sums = task.training_step(Fixed(student), (torch.zeros(6, 1, 4, 4), labels))
    want, kl, ce = reference_loss(student, teacher, labels, temperature, alpha, smoothing)
    assert loss.item() == pytest.approx(want, abs=1e-6)
    metrics = task.summarize(distributed.reduce_sums(sums))  # as the engine adds them up
    # the sums are float32 and T^2 scales the KL up: relative tolerance for the parts
    assert metrics["kl"] == pytest.approx(kl, rel=1e-6) and metrics["ce"] == pytest.approx(ce, rel=1e-6)
    assert metrics["loss"] == pytest.approx(want, rel=1e-6)


def test_alpha_zero_is_plain_cross_entropy(logits):
    student, teacher, labels = logits
    task = DistillTask(Fixed(teacher), 5, temperature=4.0, alpha=0.0, label_smoothing=0.1)
    loss, _ = task.training_step(Fixed(student), (torch.zeros(6, 1, 4, 4), labels))
    assert loss.item() == pytest.approx(F.cross_entropy(student, labels, label_smoothing=0.1).item(), abs=1e-7)


def test_teacher_is_frozen_and_only_the_student_learns(logits):
    student, teacher, labels = logits
    teacher_net, student_net = Fixed(teacher), Fixed(student)
    teacher_net.train()
    task = DistillTask(teacher_net, 5)
    loss, _ = task.training_step(student_net, (torch.zeros(6, 1, 4, 4), labels))
    loss.backward()
    assert not teacher_net.training and teacher_net.logits.grad is None
    assert student_net.logits.grad is not None and student_net.logits.grad.abs().sum() > 0


def test_validation_reports_agreement_with_the_teacher():
    student = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]])
    teacher = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 0])
    task = DistillTask(Fixed(teacher), 3)
    with torch.no_grad():  # as the engine validates
        sums = task.validation_step(Fixed(student), (torch.zeros(4, 1, 4, 4), labels))
    metrics = task.summarize(distributed.reduce_sums(sums))  # as the engine adds them up
    assert metrics["accuracy"] == 1.0  # the student's own metrics, as ClassifyTask names them
    assert metrics["agreement"] == 0.5  # rows 0 and 1 agree
    assert metrics["teacher_accuracy"] == 0.5


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny teacher run (simple_cnn width 16) trained on the helpers' image folder."""
    root = tmp_path_factory.mktemp("distill")
    modelcycle.prepare(make_image_folder(root / "images"), root / "data", val=0.2, seed=0)
    overrides = tiny_overrides(
        root / "data", root / "runs", name="teacher", train__epochs=4, model__args="{width: 16, dropout: 0.0}"
    )
    return modelcycle.train(modelcycle.load_config(None, overrides), progress=False).path


def test_distill_through_the_cli_then_evaluate_the_student(teacher: Path):
    out = teacher.parent / "student"
    result = run_cli(
        "distill", teacher, "--student", "simple_cnn", "--out", out, "--temperature", "2", "model.args={width: 4}"
    )
    assert result.returncode == 0, result.stderr
    assert_mentions(result.stderr, "teacher", "student", "16,851", "1,191", "T=2")  # parameter counts

    manifest = json.loads((out / "model" / "modelcycle.json").read_text())
    record = manifest["distillation"]
    assert record["teacher"] == str((teacher / "model").resolve())
    assert record["teacher_architecture"]["args"]["width"] == 16
    assert record["temperature"] == 2.0 and record["alpha"] == 0.9
    teacher_manifest = json.loads((teacher / "model" / "modelcycle.json").read_text())
    assert record["teacher_val_accuracy"] == teacher_manifest["metrics"]["val_accuracy"]
    assert record["student_parameters"] < record["teacher_parameters"]
    assert manifest["task"] == "classify" and manifest["architecture"]["args"] == {"width": 4}
    assert {"val_accuracy", "val_agreement", "train_kl", "train_ce"} <= set(manifest["metrics"])

    # the student run is the teacher's recipe with the student's model and folder
    config = modelcycle.Run.open(out).config
    assert config.model.name == "simple_cnn" and config.model.args == {"width": 4}
    assert config.run.name == "student" and config.train.epochs == 4 and config.data.image_size == 16
    assert config.distill.teacher == record["teacher"]

    # an ordinary package: evaluate (the function behind `modelcycle evaluate`) takes it as it is
    metrics = modelcycle.evaluate(out / "model")
    assert metrics["num_samples"] == 6 and metrics["backend"] == "torch"
    assert metrics["accuracy"] == pytest.approx(manifest["metrics"]["val_accuracy"])


def test_an_interrupted_distillation_resumes_to_the_same_weights(teacher: Path):
    runs = teacher.parent
    args = (["model.args={width: 4}", "train.epochs=3"],)
    straight = modelcycle.distill(teacher, "simple_cnn", runs / "straight", *args, progress=False)
    with pytest.raises(TrainingInterrupted):
        modelcycle.distill(teacher, "simple_cnn", runs / "stopped", *args, progress=False, callbacks=[InterruptAt(5)])
    assert not (runs / "stopped" / "model").exists()
    resumed = modelcycle.distill(teacher, "simple_cnn", runs / "stopped", *args, resume=True, progress=False)
    a, b = load_file(straight.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "resumed from step=5" in (runs / "stopped" / "events.log").read_text()


# ---------------------------------------------------------------- bad input


def test_an_int8_teacher_is_refused(teacher: Path, tmp_path: Path):
    from modelcycle.compress.quantize import quantize_int8

    quantize_int8(teacher, tmp_path / "int8", calib=16)
    with pytest.raises(UserError, match=r"holds onnx weights .* distill from the original run"):
        modelcycle.distill(tmp_path / "int8", "simple_cnn", tmp_path / "student", progress=False)
    assert not (tmp_path / "student").exists()


def test_unknown_student_names_the_closest_model(teacher: Path, tmp_path: Path):
    result = run_cli("distill", teacher, "--student", "mobilenet_v3", "--out", tmp_path / "student")
    assert_user_error(result, "--student: unknown model 'mobilenet_v3'; did you mean 'mobilenet_v2'?")
    assert not (tmp_path / "student").exists()


def test_distill_settings_are_typed(teacher: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match=r"unknown key 'distill\.temprature'.*did you mean 'distill\.temperature'"):
        modelcycle.distill(teacher, "simple_cnn", tmp_path / "s", ["distill.temprature=2"], progress=False)
    with pytest.raises(ConfigError, match=r"distill\.alpha"):
        modelcycle.distill(teacher, "simple_cnn", tmp_path / "s", ["distill.alpha=1.5"], progress=False)
    with pytest.raises(ConfigError, match=r"distill\.temperature"):
        modelcycle.distill(teacher, "simple_cnn", tmp_path / "s", ["distill.temperature=0"], progress=False)
    assert not (tmp_path / "s").exists()


def test_a_teacher_that_sees_other_images_is_refused(teacher: Path, tmp_path: Path):
    with pytest.raises(UserError, match=r"image_size 16 vs the student's 24"):
        modelcycle.distill(teacher, "simple_cnn", tmp_path / "s", ["data.image_size=24"], progress=False)
    with pytest.raises(UserError, match="teacher's own run"):
        modelcycle.distill(teacher, "simple_cnn", teacher, overwrite=True, progress=False)
    assert (teacher / "model" / "modelcycle.json").is_file()  # --overwrite did not delete the teacher
