"""``modelcycle evaluate`` and ``predict`` for text classifiers: the same metrics, report and
result format as for images, computed from a Hugging Face package loaded as transformers would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from modelcycle.data.text import TextData, labelled, read_jsonl, text_loader
from modelcycle.errors import DataError, UserError
from modelcycle.evaluation.metrics import classification_metrics
from modelcycle.evaluation.predict import top_classes
from modelcycle.evaluation.report import write_report
from modelcycle.packages import open_package
from modelcycle.runs import Run


def probabilities(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities, one row per text, in order."""
    loader = text_loader([(t, 0) for t in texts], tokenizer, max_length, batch_size, train=False)
    with torch.no_grad():
        out = [torch.softmax(model(**inputs).logits.float(), dim=1) for inputs, _ in loader]
    return torch.cat(out).numpy()


def _check_backend(backend: str) -> None:
    if backend not in ("auto", "torch"):
        raise UserError(f"backend {backend!r}: a text package holds PyTorch weights only; use auto or torch")


def _examples(run: Run | None, manifest: dict, split: str, data: str | Path | None) -> list[tuple[str, int]]:
    classes = manifest["classes"]
    if data is not None:
        path = Path(data)
        return labelled(read_jsonl(path), classes, path)
    root = run.config.data.root if run is not None else manifest.get("data_root")
    if root is None:
        raise UserError("this model package does not name its data folder; pass --data FILE.jsonl")
    texts = TextData.open(root)
    if texts.classes != classes:
        raise DataError(
            f"{root}/train.jsonl now has the classes {texts.classes}, the model was trained on {classes}; "
            "evaluate on a JSONL file with --data instead"
        )
    return texts.split(split)


def text_examples(run: Run | None, manifest: dict, split: str, data: str | Path | None) -> list[tuple[str, int]]:
    """(text, label index) pairs: a JSONL file given, else the split of the package's data folder."""
    return _examples(run, manifest, split, data)


def evaluate_text(
    run: str | Path | Run, split: str = "val", data: str | Path | None = None, backend: str = "auto"
) -> dict:
    """Evaluate, write ``RUN/report/`` (report.md, report.html, confusion matrix, metrics.json,
    mistakes.jsonl: the wrong predictions, most confident first), return the metrics."""
    _check_backend(backend)
    path = run.path if isinstance(run, Run) else Path(run)
    run_obj = Run.open(path) if (path / "config.yaml").is_file() else None
    cfg = run_obj.config if run_obj else None
    model, tokenizer, manifest = (package := open_package(path)).load_text_classifier()
    classes = manifest["classes"]
    examples = _examples(run_obj, manifest, split, data)
    texts = [text for text, _ in examples]
    labels = np.array([label for _, label in examples])
    probs = probabilities(
        model, tokenizer, texts, manifest["preprocessing"]["max_length"], cfg.eval.batch_size if cfg else 64
    )
    metrics = classification_metrics(labels, probs, classes, k=cfg.eval.topk if cfg else 5)
    metrics["split"] = str(data) if data else split
    metrics["backend"] = "torch"
    metrics["task"] = package.task

    out = run_obj.report_dir if run_obj else Path(manifest["_dir"]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    wrong = wrong[np.argsort(-probs[wrong].max(1), kind="stable")]
    lines = [
        {
            "text": texts[i],
            "true": classes[labels[i]],
            "predicted": classes[int(probs[i].argmax())],
            "probability": float(probs[i].max()),
        }
        for i in wrong
    ]
    (out / "mistakes.jsonl").write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    architecture = manifest["architecture"]
    context = {
        "model": f"{architecture['name']} ({architecture['class']})",
        "backend": "torch",
        "data": metrics["split"],
        "mistakes": f"{len(lines)} texts in mistakes.jsonl",
        "source run": manifest.get("source_run", ""),
    }
    epochs = run_obj.epoch_metrics() if run_obj else []
    best = (run_obj.config.train.monitor, run_obj.config.train.monitor_direction) if run_obj else None
    write_report(out, f"Evaluation of {path.name}", metrics, classes, epochs, None, 0, context, best)
    metrics["report"] = str(out / "report.html")
    return metrics


def predict_text(
    run: str | Path, texts: list[str], topk: int = 5, backend: str = "auto", batch_size: int = 64
) -> list[dict]:
    """One dict per text: ``text``, ``label``, ``probability`` and ``topk`` (label, probability)."""
    _check_backend(backend)
    if topk < 1:
        raise DataError(f"--topk {topk}: ask for at least 1 class per text")
    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size}: run at least 1 text per batch")
    if not texts:
        raise DataError("no text to classify; pass one or more texts (quote each one)")
    empty = [str(i + 1) for i, text in enumerate(texts) if not str(text).strip()]
    if empty:
        raise DataError(f"text {', '.join(empty)} is empty; pass the words to classify")
    model, tokenizer, manifest = open_package(run).load_text_classifier()
    probs = probabilities(
        model, tokenizer, [str(t) for t in texts], manifest["preprocessing"]["max_length"], batch_size
    )
    ranked = top_classes(probs, manifest["classes"], topk)
    return [{"text": str(text), **r} for text, r in zip(texts, ranked, strict=True)]
