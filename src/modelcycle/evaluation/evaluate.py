"""``modelcycle evaluate``: metrics and a report for a run's model on a split or a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from modelcycle.data.manifest import PreparedData, read_manifest
from modelcycle.errors import UserError
from modelcycle.evaluation.inference import predict_items
from modelcycle.evaluation.metrics import classification_metrics
from modelcycle.evaluation.report import write_report
from modelcycle.export.runtime import load_predictor
from modelcycle.runs import Run


def items_for(run: Run | None, manifest: dict, split: str, data: str | Path | None) -> list[tuple[Path, int]]:
    if data is not None:
        path = Path(data)
        stats_file = path.parent / "stats.json"
        stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
        root = Path(stats.get("image_root", path.parent))
        return read_manifest(path, root, len(manifest["classes"]))
    # a bare package (an int8 copy, say) falls back to the data folder it was trained on
    root = run.config.data.root if run is not None else manifest.get("data_root")
    if root is None:
        raise UserError("this model package does not name its data folder; pass --data MANIFEST")
    return PreparedData.open(root).split(split)


def evaluate(run: str | Path | Run, split: str = "val", data: str | Path | None = None, backend: str = "auto") -> dict:
    """Evaluate, write ``RUN/report/`` (report.md, report.html, PNGs, metrics.json), return metrics."""
    path = run.path if isinstance(run, Run) else Path(run)
    run_obj = Run.open(path) if (path / "config.yaml").is_file() else None
    predictor = load_predictor(path, backend)
    manifest = predictor.manifest
    items = items_for(run_obj, manifest, split, data)
    cfg = run_obj.config if run_obj else None
    probs = predict_items(predictor, items, batch_size=cfg.eval.batch_size if cfg else 256, progress="evaluating")
    labels = np.array([label for _, label in items])
    classes = manifest["classes"]
    metrics = classification_metrics(labels, probs, classes, k=cfg.eval.topk if cfg else 5)
    metrics["split"] = str(data) if data else split

    wrong = np.flatnonzero(probs.argmax(1) != labels)
    wrong = wrong[np.argsort(-probs[wrong].max(1))] if len(wrong) else wrong  # most confident first
    limit = cfg.eval.mistakes if cfg else 36
    mistakes = [
        (items[i][0], classes[labels[i]], classes[int(probs[i].argmax())], float(probs[i].max())) for i in wrong[:limit]
    ]
    out = run_obj.report_dir if run_obj else Path(manifest["_dir"]) / "report"
    metrics["backend"] = predictor.backend
    context = {
        "model": manifest["architecture"]["name"],
        "backend": predictor.backend,
        "data": metrics["split"],
        "source run": manifest.get("source_run", ""),
    }
    write_report(
        out,
        f"Evaluation of {path.name}",
        metrics,
        classes,
        run_obj.epoch_metrics() if run_obj else [],
        mistakes,
        manifest["preprocessing"]["channels"],
        context,
        (cfg.train.monitor, cfg.train.monitor_direction) if cfg else None,
    )
    metrics["report"] = str(out / "report.html")
    return metrics
