"""``modelcycle crossval``: k-fold cross-validation, each fold a normal run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from modelcycle.config import Config, load_config
from modelcycle.data.manifest import PreparedData
from modelcycle.errors import UserError
from modelcycle.evaluation.inference import predict_items
from modelcycle.evaluation.metrics import classification_metrics
from modelcycle.tasks import registry
from modelcycle.training.service import train

REPORTED = ("accuracy", "top5", "macro_f1", "weighted_f1")


def crossval(config: Config | str | Path, overrides=(), folds: int = 5, progress: bool = True) -> dict:
    """Train one run per fold over train (+ val) images; return mean and std of each metric.

    Fold runs go to ``<run.dir>/<run.name>-crossval/fold-<i>``; the summary to ``crossval.json``
    beside them.
    """
    from modelcycle.export.runtime import load_predictor

    if not isinstance(config, Config):
        config = load_config(config, overrides)
    # the task's defaults filled now: every fold's config is this one dumped whole, so a field left
    # unset here (model.name) would reach the folds as an explicit null
    config = registry.apply_defaults(config)
    plugin = registry.for_config(config)
    if not plugin.can("crossval"):
        raise UserError(
            f"crossval takes tasks whose setup takes fold items (image classification), not run.task={plugin.name}"
        )
    if folds < 2:
        raise UserError(f"--folds {folds}: cross-validation needs at least 2 folds")
    data = PreparedData.open(config.data.root or "")
    items = data.split("train") + (data.split("val") if data.has_split("val") else [])
    labels = np.array([label for _, label in items])
    smallest = np.bincount(labels).min()
    if smallest < folds:
        raise UserError(f"the smallest class has {smallest} images, fewer than --folds {folds}; use fewer folds")
    base = Path(config.run.dir) / f"{config.run.name}-crossval"
    per_fold = []
    splits = fold_indices(items, labels, data.copy_groups(), folds, config.train.seed)
    for fold, (train_idx, val_idx) in enumerate(splits):
        fold_config = load_config(None, [f"run.dir={base}", f"run.name=fold-{fold}"], base=config.model_dump())
        val_items = [items[i] for i in val_idx]
        run = train(
            fold_config,
            overwrite=True,
            progress=progress,
            train_items=[items[i] for i in train_idx],
            val_items=val_items,
        )
        probs = predict_items(load_predictor(run.path), val_items)
        metrics = classification_metrics(labels[val_idx], probs, data.classes, k=config.eval.topk)
        per_fold.append({k: metrics[k] for k in REPORTED})
    summary = {
        "folds": folds,
        "per_fold": per_fold,
        "mean": {k: float(np.mean([f[k] for f in per_fold])) for k in REPORTED},
        "std": {k: float(np.std([f[k] for f in per_fold])) for k in REPORTED},
        "topk": metrics["topk"],  # the k of top5 (min(eval.topk, classes), the same in every fold)
        "num_classes": len(data.classes),
        "runs": str(base),
    }
    (base / "crossval.json").write_text(json.dumps(summary, indent=2))
    return summary


def fold_indices(items: list, labels: np.ndarray, copies: dict[Path, int], folds: int, seed: int):
    """Stratified folds; identical files (prepare's duplicates.json) in one fold, so no copy is
    both trained on and scored. Without copies the folds are StratifiedKFold's as before."""
    groups = [copies.get(path, -1 - i) for i, (path, _) in enumerate(items)]
    if len(set(groups)) == len(groups):
        return StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
    return StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels, groups)
