"""Every export is checked against the PyTorch model on real images before it is recorded."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from modelcycle.errors import UserError
from modelcycle.progress import progress_bar

# fp32 exports must match eager closely; the tolerance is on softmax probabilities
PROB_TOLERANCE = 1e-4
PARITY_BATCH = 32


def parity_report(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Compare two (N, classes) logit arrays: max |difference| of probabilities and top-1 agreement."""
    p_ref = _softmax(reference)
    p_new = _softmax(candidate)
    return {
        "images": int(len(reference)),
        "max_abs_diff": float(np.abs(p_ref - p_new).max()) if len(reference) else 0.0,
        "top1_agreement": float((p_ref.argmax(1) == p_new.argmax(1)).mean()) if len(reference) else 1.0,
    }


def check_parity(
    model: nn.Module,
    run_candidate: Callable[[np.ndarray], np.ndarray],
    images: torch.Tensor,
    what: str,
    tolerance: float = PROB_TOLERANCE,
    min_agreement: float = 1.0,
    unit: str = "images",
) -> dict:
    """Run both on ``images``; raise a UserError naming the figures when they disagree. In
    batches of about ``PARITY_BATCH`` (never of one: a pt2 export fixes a batch of 1 as special),
    counted on a progress bar."""
    reference, candidate = [], []
    chunks = np.array_split(np.arange(len(images)), max(1, len(images) // PARITY_BATCH))
    with torch.no_grad(), progress_bar(f"parity check ({what})", len(images)) as advance:
        for rows in chunks:
            batch = images[torch.from_numpy(rows)]
            reference.append(model.eval()(batch).float().numpy())
            candidate.append(run_candidate(batch.numpy()))
            advance(len(rows))
    report = parity_report(np.concatenate(reference), np.concatenate(candidate))
    report[unit] = report.pop("images")  # what was compared: images, or texts
    report["passed"] = report["max_abs_diff"] <= tolerance and report["top1_agreement"] >= min_agreement
    if not report["passed"]:
        raise UserError(
            f"{what} does not match the PyTorch model on {report[unit]} validation {unit}: max probability "
            f"difference {report['max_abs_diff']:.2e} (allowed {tolerance:.0e}), top-1 agreement "
            f"{report['top1_agreement']:.2%} (needed {min_agreement:.0%}); the export was not recorded"
        )
    return report


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
