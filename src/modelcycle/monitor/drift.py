"""Is a window of served traffic still like the data the model learned from?

Each test answers for one kind of change and has a conventional threshold:

- numerical features (brightness, contrast, ..., confidence): the Population Stability Index
  over the reference's deciles (0.1 worth a look, 0.2 drifted: the credit-scoring convention it
  comes from) and the two-sample Kolmogorov-Smirnov statistic and p-value, reported beside it.
  PSI decides, because with thousands of requests KS calls every negligible shift significant;
- the predicted-class mix: chi-squared against the reference's class proportions;
- the embedding: how far the window's mean moved, in reference standard deviations of the
  whitened principal components (0 when nothing moved; its noise is about sqrt(k / n));
- confidence collapse: the mean max-softmax fell by more than ``confidence_drop``;
- out-of-distribution rate: the share of images whose max-softmax is below the threshold
  calibrated on validation data (by construction ``ood_quantile`` of validation images are under it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from modelcycle.config import MonitorSection

EPS = 1e-4  # floor of a bin's share, so an empty bin costs a large but finite PSI
DECILES = np.linspace(0.1, 0.9, 9)
ATOM = 0.01  # a value this share of the reference holds gets a bin of its own
MIN_VALUES = 50  # fewer values of a feature in a window: not measured (PSI over ten bins is noise)


def bin_edges(reference: np.ndarray) -> np.ndarray:
    """Inner bin edges at the reference's deciles (fewer when values repeat).

    A decile that many reference values equal (every training image 500 px, say) also gets an
    edge just below it, so that value has a bin of its own: else (-inf, value] would hold it and
    everything smaller, and images smaller than all the reference ones would not show."""
    edges = np.unique(np.quantile(reference, DECILES))
    atoms = [e for e in edges if np.mean(reference == e) >= ATOM]
    return np.unique(np.concatenate([edges, np.nextafter(atoms, -np.inf)]))


def shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin (-inf, e1], (e1, e2], ..., (ek, inf)."""
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population Stability Index between two share vectors over the same bins."""
    e = np.clip(np.asarray(expected, np.float64), EPS, None)
    a = np.clip(np.asarray(actual, np.float64), EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def class_mix(reference_shares: list[float], labels: np.ndarray) -> tuple[float, float]:
    """Chi-squared statistic and p-value of the window's predicted classes against the reference mix."""
    ref = np.asarray(reference_shares, np.float64)
    ref = (ref + 0.5 / max(len(labels), 1)) / (ref + 0.5 / max(len(labels), 1)).sum()  # no zero expectation
    observed = np.bincount(labels, minlength=len(ref)).astype(np.float64)
    result = stats.chisquare(observed, ref * observed.sum())
    return float(result.statistic), float(result.pvalue)


def embedding_shift(coordinates: np.ndarray) -> float:
    """Distance of the window's mean from the reference mean (the origin of whitened coordinates)."""
    return float(np.linalg.norm(coordinates.mean(0)))


@dataclass
class Thresholds:
    psi_warn: float = 0.1
    psi_alert: float = 0.2
    class_alpha: float = 0.001
    embedding_alert: float = 0.5
    ood_alert: float = 0.25
    confidence_drop: float = 0.15

    @classmethod
    def from_config(cls, cfg: MonitorSection, psi_alert: float | None = None) -> Thresholds:
        names = cls.__dataclass_fields__
        values = {name: getattr(cfg, name) for name in names}
        if psi_alert is not None:
            values["psi_alert"] = psi_alert
            values["psi_warn"] = min(values["psi_warn"], psi_alert)
        return cls(**values)


def _level(value: float, warn: float, alert: float) -> str:
    return "drift" if value >= alert else "warn" if value >= warn else "ok"


def score_window(profile: dict, window: dict[str, np.ndarray], limits: Thresholds) -> dict:
    """Every test on one window. ``window`` holds one array per feature (as the log stores them),
    ``label``, ``confidence`` and, when the profile has an embedding, ``embedding`` (n, k).

    A feature's NaN values (no size for an image sent as a tensor, a column an older log lacked)
    are left out of its tests; with fewer than ``MIN_VALUES`` left (or than the window's rows, for
    a smaller window) it is ``"drift": "unmeasured"``, neither an alarm nor an all-clear.

    Returns ``{"features": {name: {...scores, "drift": ok|warn|drift|unmeasured}}, "drifted": [names],
    "verdict"}``."""
    out: dict[str, dict] = {}
    rows = len(window["label"])
    for name, ref in profile["features"].items():
        values = window[name]
        values = values[~np.isnan(values)]
        if len(values) < min(MIN_VALUES, rows) or not len(values):
            out[name] = {"values": len(values), "reference_mean": ref["mean"], "drift": "unmeasured"}
            continue
        value = psi(ref["shares"], shares(values, np.asarray(ref["edges"])))
        ks = stats.ks_2samp(np.asarray(ref["sample"]), values)
        out[name] = {
            "psi": value,
            "ks": float(ks.statistic),
            "ks_p": float(ks.pvalue),
            "mean": float(values.mean()),
            "values": len(values),
            "reference_mean": ref["mean"],
            "drift": _level(value, limits.psi_warn, limits.psi_alert),
        }
    chi2, p = class_mix(profile["class_shares"], window["label"])
    out["class_mix"] = {"chi2": chi2, "p": p, "drift": "drift" if p < limits.class_alpha else "ok"}
    if profile.get("embedding") and "embedding" in window:
        shift = embedding_shift(window["embedding"])
        out["embedding"] = {"shift": shift, "drift": "drift" if shift >= limits.embedding_alert else "ok"}
    confidence = float(window["confidence"].mean())
    reference = profile["features"]["confidence"]["mean"]
    out["confidence_collapse"] = {
        "mean": confidence,
        "reference_mean": reference,
        "drift": "drift" if confidence <= reference - limits.confidence_drop else "ok",
    }
    threshold = profile["ood"]["threshold"]
    rate = float((window["confidence"] < threshold).mean())
    out["ood_rate"] = {
        "rate": rate,
        "threshold": threshold,
        "expected": profile["ood"]["quantile"],
        "drift": "drift" if rate >= limits.ood_alert else "ok",
    }
    drifted = [name for name, r in out.items() if r["drift"] == "drift"]
    warned = [name for name, r in out.items() if r["drift"] == "warn"]
    verdict = "drift" if drifted else "warn" if warned else "ok"
    return {"features": out, "drifted": drifted, "warned": warned, "verdict": verdict}
