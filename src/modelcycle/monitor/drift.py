"""Is a window of served traffic still like the data the model learned from?

Each test answers for one kind of change and has a conventional threshold:

- numerical features (brightness, contrast, ..., confidence): the Population Stability Index
  over the reference's deciles (0.1 worth a look, 0.2 drifted: the credit-scoring convention it
  comes from) and the two-sample Kolmogorov-Smirnov statistic and p-value, reported beside it.
  PSI decides, because with thousands of requests KS calls every negligible shift significant
  (and with a few dozen misses a real one); each verdict's ``reason`` says so, with both figures.
  A window too small to fill ten bins gets the deciles merged into fewer (``bins_for``);
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

from modelcycle.config import MonitorSection

EPS = 1e-4  # floor of a bin's share, so an empty bin costs a large but finite PSI
DECILES = np.linspace(0.1, 0.9, 9)
ATOM = 0.01  # a value this share of the reference holds gets a bin of its own
MIN_VALUES = 50  # fewer values of a feature in a window: not measured (PSI over ten bins is noise)
# PSI ~ chi-squared(bins - 1) / n on unchanged data: a bias of about (bins - 1) / n. With at least
# this many expected values per bin it stays near 1/20 = 0.05, half the 0.1 warn level
MIN_PER_BIN = 20
KS_ALPHA = 0.05  # the conventional level, for the wording only: KS never decides a verdict


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


def bins_for(values: int) -> int:
    """How many bins a window of ``values`` values can fill: 10 (the deciles) from 200 values, down to 2."""
    return int(np.clip(values // MIN_PER_BIN, 2, 10))


def coarsen(edges: np.ndarray, reference: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's bins merged into about ``bins`` of near-equal reference share: the kept inner
    edges and the reference shares of the merged bins (exact sums, so no sample is needed)."""
    if len(reference) <= bins:
        return edges, reference
    below = np.cumsum(reference)[:-1]  # reference share at or below each edge
    keep = np.unique([int(np.abs(below - q).argmin()) for q in np.arange(1, bins) / bins])
    return edges[keep], np.add.reduceat(reference, np.r_[0, keep + 1])


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population Stability Index between two share vectors over the same bins."""
    e = np.clip(np.asarray(expected, np.float64), EPS, None)
    a = np.clip(np.asarray(actual, np.float64), EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def class_mix(reference_shares: list[float], labels: np.ndarray) -> tuple[float, float]:
    """Chi-squared statistic and p-value of the window's predicted classes against the reference mix."""
    from scipy import stats  # a second or more to import: not for the profile training writes

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


def _above(value: float, limit: float, text: str = "{:.3g}") -> str:
    """'0.31 >= 0.2' or '0.03 < 0.1': the comparison that decided, written out."""
    return f"{text.format(value)} {'>=' if value >= limit else '<'} {text.format(limit)}"


def psi_reason(value: float, ks_p: float, limits: Thresholds) -> str:
    """Which test decided a feature's verdict and why: PSI against its levels, with KS's p beside it."""
    if value >= limits.psi_alert or value < limits.psi_warn:
        psi_part = f"PSI {_above(value, limits.psi_alert if value >= limits.psi_alert else limits.psi_warn)}"
    else:
        psi_part = f"PSI {value:.3g} between {limits.psi_warn:g} (warn) and {limits.psi_alert:g}"
    significance = "significant" if ks_p < KS_ALPHA else "not significant"
    return f"{psi_part}; KS p={ks_p:.2g} {significance} (PSI decides, KS is reported only)"


def score_window(profile: dict, window: dict[str, np.ndarray], limits: Thresholds) -> dict:
    """Every test on one window. ``window`` holds one array per feature (as the log stores them),
    ``label``, ``confidence`` and, when the profile has an embedding, ``embedding`` (n, k).

    A feature's NaN values (no size for an image sent as a tensor, a column an older log lacked)
    are left out of its tests; with fewer than ``MIN_VALUES`` left (or than the window's rows, for
    a smaller window) it is ``"drift": "unmeasured"``, neither an alarm nor an all-clear.

    Returns ``{"features": {name: {...scores, "drift": ok|warn|drift|unmeasured}}, "drifted": [names],
    "verdict"}``."""
    from scipy import stats  # see class_mix

    out: dict[str, dict] = {}
    rows = len(window["label"])
    for name, ref in profile["features"].items():
        values = window[name]
        values = values[~np.isnan(values)]
        needed = min(MIN_VALUES, rows)
        if len(values) < needed or not len(values):
            reason = f"{len(values)} values < {needed}: too few to test"
            out[name] = {"values": len(values), "reference_mean": ref["mean"], "drift": "unmeasured", "reason": reason}
            continue
        edges, expected = coarsen(np.asarray(ref["edges"]), np.asarray(ref["shares"]), bins_for(len(values)))
        value = psi(expected, shares(values, edges))
        ks = stats.ks_2samp(np.asarray(ref["sample"]), values)
        out[name] = {
            "psi": value,
            "bins": len(expected),
            "ks": float(ks.statistic),
            "ks_p": float(ks.pvalue),
            "mean": float(values.mean()),
            "values": len(values),
            "reference_mean": ref["mean"],
            "test": "PSI",
            "drift": _level(value, limits.psi_warn, limits.psi_alert),
            "reason": psi_reason(value, float(ks.pvalue), limits),
        }
    chi2, p = class_mix(profile["class_shares"], window["label"])
    out["class_mix"] = {
        "chi2": chi2,
        "p": p,
        "test": "chi-squared",
        "drift": "drift" if p < limits.class_alpha else "ok",
        "reason": f"chi-squared p={p:.2g} {'<' if p < limits.class_alpha else '>='} {limits.class_alpha:g}",
    }
    if profile.get("embedding") and "embedding" in window:
        shift = embedding_shift(window["embedding"])
        out["embedding"] = {
            "shift": shift,
            "test": "embedding shift",
            "drift": "drift" if shift >= limits.embedding_alert else "ok",
            "reason": f"mean shift {_above(shift, limits.embedding_alert)} reference std devs",
        }
    confidence = float(window["confidence"].mean())
    reference = profile["features"]["confidence"]["mean"]
    out["confidence_collapse"] = {
        "mean": confidence,
        "reference_mean": reference,
        "test": "mean confidence",
        "drift": "drift" if confidence <= reference - limits.confidence_drop else "ok",
        "reason": f"mean {confidence:.3f}, reference {reference:.3f}: "
        + (f"fell {_above(reference - confidence, limits.confidence_drop)}" if confidence < reference else "no fall"),
    }
    threshold = profile["ood"]["threshold"]
    rate = float((window["confidence"] < threshold).mean())
    out["ood_rate"] = {
        "rate": rate,
        "threshold": threshold,
        "expected": profile["ood"]["quantile"],
        "test": "OOD rate",
        "drift": "drift" if rate >= limits.ood_alert else "ok",
        "reason": f"OOD rate {_above(rate, limits.ood_alert, '{:.1%}')}",
    }
    drifted = [name for name, r in out.items() if r["drift"] == "drift"]
    warned = [name for name, r in out.items() if r["drift"] == "warn"]
    verdict = "drift" if drifted else "warn" if warned else "ok"
    return {"features": out, "drifted": drifted, "warned": warned, "verdict": verdict}
