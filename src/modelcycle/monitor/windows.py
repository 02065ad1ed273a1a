"""The prediction log cut into windows, each scored against the reference profile: what
``modelcycle monitor`` reports, prints as JSON and watches."""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelcycle.config import MonitorSection
from modelcycle.errors import UserError
from modelcycle.monitor import log
from modelcycle.monitor.drift import Thresholds, score_window


@dataclass
class Traffic:
    """One model's logged rows (growing, for --watch) and the profile they are judged against."""

    conn: sqlite3.Connection
    model: str
    profile: dict
    reference: str
    rows: dict[str, np.ndarray] = field(default_factory=dict)

    def refresh(self) -> int:
        """Read rows logged since the last call; returns how many came."""
        last = int(self.rows["id"][-1]) if self.rows and len(self.rows["id"]) else 0
        new = log.read_rows(self.conn, self.model, after=last)
        if not self.rows:
            self.rows = new
        elif len(new["id"]):
            self.rows = {k: np.concatenate([self.rows[k], new[k]]) for k in new}
        return len(new["id"])

    @property
    def count(self) -> int:
        return len(self.rows.get("id", ()))


def open_traffic(folder: str | Path, cfg: MonitorSection, reference: str | Path | None, model: str | None) -> Traffic:
    """The log in ``folder`` and the profile to compare with: ``reference``'s (a run folder or
    package; computed if it has none), else the one the server stored when it started."""
    conn = log.open_log(folder)
    names = log.models(conn)
    if model is None:
        if len(names) > 1:
            raise UserError(f"{log.db_path(folder)} logs several models ({', '.join(names)}); pick one with --model")
        if not names:
            raise UserError(f"{log.db_path(folder)} has no predictions yet; send the server some requests first")
        model = names[0]
    elif model not in names:
        raise UserError(f"--model {model!r}: {log.db_path(folder)} logs {', '.join(names) or 'no model yet'}")
    if reference is not None:
        from modelcycle.monitor.profile import ensure_profile  # torch: only when it is needed

        profile = ensure_profile(reference, cfg)
        source = str(reference)
    else:
        profile = log.stored_profile(conn, model)
        source = f"the profile {model} was served with"
        if profile is None:
            raise UserError(f"{log.db_path(folder)} has no reference profile for {model}; pass --reference RUN")
    traffic = Traffic(conn, model, profile, source)
    traffic.refresh()
    return traffic


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def score(traffic: Traffic, start: int, size: int, limits: Thresholds) -> dict:
    """The window of rows ``start`` .. ``start + size``: traffic figures and every drift test."""
    part = {k: v[start : start + size] for k, v in traffic.rows.items()}
    embedding = traffic.profile.get("embedding")
    if "embedding" in part and (embedding is None or part["embedding"].shape[1] != len(embedding["sample"][0])):
        del part["embedding"]  # logged with another profile's embedding map: not comparable
    result = score_window(traffic.profile, part, limits)
    latency = part["latency_ms"]
    return {
        "first_id": int(part["id"][0]),
        "last_id": int(part["id"][-1]),
        "start": _iso(part["time"][0]),
        "end": _iso(part["time"][-1]),
        "images": int(size),
        "requests": int(len(np.unique(part["request"]))),
        "latency_p50_ms": float(np.percentile(latency, 50)),
        "latency_p99_ms": float(np.percentile(latency, 99)),
        "class_counts": np.bincount(part["label"], minlength=len(traffic.profile["classes"])).tolist(),
        **result,
    }


def windows(traffic: Traffic, size: int, step: int | None, limits: Thresholds) -> list[dict]:
    """Every complete window: ``size`` rows each, one starting every ``step`` rows."""
    step = step or size
    out = []
    for number, start in enumerate(range(0, traffic.count - size + 1, step)):
        out.append({"index": number, **score(traffic, start, size, limits)})
    return out
