"""Classification metrics from labels and predicted probabilities."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str], k: int = 5) -> dict:
    """accuracy, top-k, per-class precision/recall/F1, macro and weighted averages, confusion."""
    labels = np.asarray(labels)
    predicted = probs.argmax(1)
    k = min(k, len(classes))
    topk = np.argsort(-probs, axis=1)[:, :k]
    every = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(labels, predicted, labels=every, zero_division=0)
    out = {
        "num_samples": int(len(labels)),
        "accuracy": float((predicted == labels).mean()) if len(labels) else 0.0,
        "top5": float((topk == labels[:, None]).any(1).mean()) if len(labels) else 0.0,
        "topk": k,
    }
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(labels, predicted, labels=every, average=avg, zero_division=0)
        out.update({f"{avg}_precision": float(ap), f"{avg}_recall": float(ar), f"{avg}_f1": float(af)})
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(classes)
    }
    out["confusion_matrix"] = confusion_matrix(labels, predicted, labels=every).tolist()
    return out


def top5_label(k: int, num_classes: int) -> str:
    """The one name of the top-k accuracy, ``top5``, and what it means where k is not 5: with 4
    classes it is top-4 (and so 1.0), which a bare "top5" would hide."""
    if k == 5:
        return "top5"
    why = f"of {num_classes} classes" if k == num_classes else f"eval.topk={k}"
    return f"top5 ({why}: top-{k})"
