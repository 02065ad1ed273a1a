"""Knowledge distillation: a small student learns from a trained teacher as well as from the labels.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

The softened teacher distribution carries what the labels do not: which wrong classes look alike.
The T^2 factor keeps the soft part's gradients on the scale of the hard part whatever T is
(Hinton et al. 2015), so alpha means the same at every temperature. The engine knows nothing of
teachers: the task holds the frozen teacher, and a distilled run is an ordinary classify run
whose package evaluate, predict, export and serve take as they are.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from modelcycle.config import Config, load_config
from modelcycle.errors import ConfigError, UserError
from modelcycle.models.registry import resolve_builder
from modelcycle.packages import load_model, pytorch_classifier
from modelcycle.runs import refuse_own_run
from modelcycle.tasks.images import IMAGE_PLUGIN_FIELDS, ClassifySetup, ClassifyTask, run_setup
from modelcycle.tasks.plugin import SetupContext, TaskParts, TaskPlugin


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_teacher || p_student) at temperature T, averaged over the batch; in float32
    because under bf16 autocast the small probabilities of the wrong classes are what matters."""
    t = temperature
    log_p_student = F.log_softmax(student.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


class DistillTask(ClassifyTask):
    """ClassifyTask plus the teacher's soft targets. The hard part *is* ClassifyTask's step (label
    smoothing included), fed the logits already computed, so a distilled run reports the same
    metrics under the same names (``train.monitor=val_accuracy`` works) plus kl, ce, and on
    validation the student's top-1 agreement with the teacher and the teacher's own accuracy,
    both nearly free because validation runs the teacher anyway."""

    metric_names = {
        "train": ("loss", "accuracy", "kl", "ce"),
        "val": ("loss", "accuracy", "top5", "agreement", "teacher_accuracy"),
    }

    def __init__(
        self,
        teacher: nn.Module,
        num_classes: int,
        temperature: float = 4.0,
        alpha: float = 0.9,
        label_smoothing: float = 0.0,
    ):
        super().__init__(num_classes, label_smoothing)
        # frozen: eval mode (BatchNorm statistics and dropout fixed) and no gradients, ever
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha
        self._device: torch.device | None = None

    def _teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher follows the batches to the student's device on first use; it runs under
        whatever autocast the engine opened around the step."""
        if self._device != images.device:
            self.teacher.to(images.device)
            self._device = images.device
        with torch.no_grad():
            return self.teacher(images)

    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels = batch
        logits = model(images)
        teacher = self._teacher_logits(images)
        ce, sums = super().training_step(lambda _: logits, batch)
        kl = soft_target_loss(logits, teacher, self.temperature)
        loss = self.alpha * kl + (1.0 - self.alpha) * ce
        n = labels.numel()
        sums["ce"] = sums["loss"]
        sums["kl"] = kl.detach() * n
        sums["loss"] = loss.detach() * n
        return loss, sums

    def validation_step(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = model(images).float()
        teacher_top1 = self._teacher_logits(images).float().argmax(1)
        sums = super().validation_step(lambda _: logits, batch)
        sums["agree"] = (logits.argmax(1) == teacher_top1).sum()
        sums["teacher_correct"] = (teacher_top1 == labels).sum()
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        out = super().summarize(sums)
        count = max(sums.get("count", 0.0), 1.0)
        for key, name in (("kl", "kl"), ("ce", "ce"), ("agree", "agreement"), ("teacher_correct", "teacher_accuracy")):
            if key in sums:
                out[name] = sums[key] / count
        return out


# ---------------------------------------------------------------- from a teacher run to a student run


def teacher_manifest(teacher: str | Path) -> dict:
    """The teacher's package, refused unless it is a PyTorch image classifier."""
    return pytorch_classifier(teacher, "teacher", "distill")


def student_config(
    teacher: str | Path, student: str, out: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """The teacher run's own recipe (same data, image size, preprocessing and training settings)
    with the student architecture, the run folder ``out`` and ``distill.teacher`` set; then the
    overrides. Starting from the teacher's recipe is what makes the two comparable."""
    manifest = teacher_manifest(teacher)
    try:
        resolve_builder(student)  # before any data is read
    except ConfigError as exc:
        raise ConfigError(f"--student: {str(exc).removeprefix('model.name: ')}") from None
    base = _teacher_recipe(Path(teacher), manifest).model_dump(mode="json")
    out = Path(out)
    _refuse_teacher_folder(out, manifest)  # before `--overwrite` could delete the teacher
    base["run"] = {**base["run"], "dir": str(out.parent), "name": out.name}
    base["model"] = {"name": student, "args": {}}
    base["distill"] = {**base.get("distill", {}), "teacher": str(Path(manifest["_dir"]).resolve())}
    if manifest.get("data_root"):  # absolute: the teacher's recipe may name it relative to another folder
        base["data"]["root"] = manifest["data_root"]
    # the package's preprocessing is what the teacher saw: a Hugging Face teacher's came from its image
    # processor, not from its recipe's data.* (left at their defaults there)
    pre = dict(manifest.get("preprocessing", {}))
    if pre.get("resize_to") == pre.get("image_size"):  # no resize of its own: follow an image_size override
        pre.pop("resize_to", None)
    base["data"].update({k: pre[k] for k in PREPROCESSING_KEYS if pre.get(k) is not None})
    return load_config(None, overrides, base=base)


PREPROCESSING_KEYS = ("image_size", "channels", "mean", "std", "resize_to", "keep_aspect")


def _teacher_recipe(teacher: Path, manifest: dict) -> Config:
    for run in (teacher, Path(manifest["source_run"]) if manifest.get("source_run") else None):
        if run is not None and (run / "config.yaml").is_file():
            return load_config(run / "config.yaml")
    # a bare package: its preprocessing is all we know of the recipe
    pre = manifest["preprocessing"]
    return load_config(
        None,
        [
            f"data.image_size={pre['image_size']}",
            f"data.channels={pre['channels']}",
            f"data.mean={list(pre['mean'])}",
            f"data.std={list(pre['std'])}",
        ],
    )


def attach(config: Config, parts: ClassifySetup) -> tuple[ClassifySetup, dict]:
    """Swap the classify task for a DistillTask holding ``config.distill.teacher``; return the
    setup and the ``distillation`` record for the package. The teacher must see exactly the
    images the student sees (classes, size, channels, normalisation), or its logits mean nothing."""
    manifest = teacher_manifest(config.distill.teacher)
    _refuse_teacher_folder(Path(config.run.dir) / config.run.name, manifest)
    problems = []
    if manifest["classes"] != parts.data.classes:
        problems.append(f"classes {manifest['classes']} vs the data's {parts.data.classes}")
    theirs, ours = manifest["preprocessing"], parts.preprocessing
    for key in ("image_size", "channels", "mean", "std"):
        if not _same(theirs.get(key), ours.get(key)):
            problems.append(f"preprocessing {key} {theirs.get(key)} vs the student's {ours.get(key)}")
    if problems:
        raise UserError(
            f"teacher {manifest['_dir']} does not fit the student's data: "
            + "; ".join(problems)
            + ". Distill on the teacher's data and preprocessing (drop the data.* overrides)"
        )
    teacher, _ = load_model(manifest["_dir"])
    d = config.distill
    task = DistillTask(teacher, len(parts.data.classes), d.temperature, d.alpha, config.train.label_smoothing)
    record = {
        "teacher": str(Path(manifest["_dir"]).resolve()),
        "teacher_architecture": manifest["architecture"],
        "teacher_val_accuracy": manifest.get("metrics", {}).get("val_accuracy"),
        "teacher_parameters": count_parameters(teacher),
        "student_parameters": count_parameters(parts.model),
        "temperature": d.temperature,
        "alpha": d.alpha,
    }
    return replace(parts, task=task), record


def _refuse_teacher_folder(run_dir: Path, manifest: dict) -> None:
    refuse_own_run(
        run_dir, manifest, f"the student's run folder {run_dir} is the teacher's own run; choose another --out"
    )


def _same(a, b) -> bool:
    """Equal, with float tolerance for mean/std lists that went through JSON and YAML."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(a, b, strict=True))
    return a == b


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _setup(config: Config, ctx: SetupContext) -> TaskParts:
    if not config.distill.teacher:
        raise ConfigError(
            "run.task=distill needs distill.teacher=RUN (or use `modelcycle distill TEACHER --student ...`)"
        )
    return run_setup(config, ctx, attach)


# run.task=distill: a classify run that must have a teacher; its package is an ordinary classifier
PLUGIN = TaskPlugin(
    name="distill",
    setup=_setup,
    **IMAGE_PLUGIN_FIELDS,
    package_task="classify",
    description="an image classifier learning from a teacher's soft targets (distill.teacher)",
)
