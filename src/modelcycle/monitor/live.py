"""Monitoring inside the server: the request path only hands arrays over; one background thread
computes features, writes the log in batched transactions and keeps the drift gauges on /metrics.

The hook (:meth:`Monitor.observe`) runs on the event loop after a request's logits are known. It
samples, then puts references to the arrays it was given on a queue: no copy, no numpy maths, no
I/O, so serving with monitoring on stays within a few percent of serving without it
(benchmarks/bench_monitor.py). If the writer ever falls ``monitor.max_pending`` rows behind, rows
are dropped and counted (``modelcycle_monitor_dropped_total``) rather than growing memory.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import queue
import random
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image
from prometheus_client import CollectorRegistry, Counter, Gauge

from modelcycle.config import MonitorSection
from modelcycle.monitor import features as feats
from modelcycle.monitor import log
from modelcycle.monitor.drift import Thresholds, score_window
from modelcycle.monitor.profile import logit_map

LEVELS = {"ok": 0, "warn": 1, "drift": 2, "unmeasured": float("nan")}  # NaN: no value, not a stale one
_STOP = object()
logger = logging.getLogger("modelcycle.monitor")


class _Model:
    """What the writer needs to know about one served model."""

    def __init__(self, name: str, version: str, profile: dict, preprocessing: dict):
        self.name, self.version, self.profile = name, version, profile
        self.mean, self.std = feats.pixel_scale(preprocessing)
        self.to_embedding = logit_map(profile.get("embedding"))
        self.recent: dict[str, np.ndarray] = {}  # the last `window` rows, for the live gauges
        self.since_scored = 0


class Gauges:
    def __init__(self, registry: CollectorRegistry):
        r = registry
        self.psi = Gauge("modelcycle_drift_psi", "PSI of a feature, last window", ["model", "feature"], registry=r)
        self.ks = Gauge(
            "modelcycle_drift_ks", "KS statistic of a feature, last window", ["model", "feature"], registry=r
        )
        self.level = Gauge(
            "modelcycle_drift_level", "0 ok, 1 warn, 2 drift, per test, last window", ["model", "test"], registry=r
        )
        self.class_p = Gauge("modelcycle_class_mix_pvalue", "Chi-squared p of the class mix", ["model"], registry=r)
        self.embedding = Gauge(
            "modelcycle_embedding_shift", "Embedding mean shift (reference std devs)", ["model"], registry=r
        )
        self.ood = Gauge(
            "modelcycle_ood_rate", "Share of images below the calibrated confidence", ["model"], registry=r
        )
        self.confidence = Gauge("modelcycle_confidence_mean", "Mean max-softmax, last window", ["model"], registry=r)
        self.logged = Counter(
            "modelcycle_monitor_logged", "Images written to the prediction log", ["model"], registry=r
        )
        self.dropped = Counter("modelcycle_monitor_dropped", "Images not logged: the writer was behind", registry=r)
        self.windows = Counter(
            "modelcycle_monitor_windows",
            "Times the last window was scored (about one per monitor.step images)",
            ["model"],
            registry=r,
        )

    def show(self, model: str, result: dict) -> None:
        for name, scores in result["features"].items():
            self.level.labels(model, name).set(LEVELS[scores["drift"]])
            if "psi" in scores or scores["drift"] == "unmeasured":
                self.psi.labels(model, name).set(scores.get("psi", float("nan")))
                self.ks.labels(model, name).set(scores.get("ks", float("nan")))
        tests = result["features"]
        self.class_p.labels(model).set(tests["class_mix"]["p"])
        if "embedding" in tests:
            self.embedding.labels(model).set(tests["embedding"]["shift"])
        self.ood.labels(model).set(tests["ood_rate"]["rate"])
        self.confidence.labels(model).set(tests["confidence_collapse"]["mean"])
        self.windows.labels(model).inc()


class Monitor:
    def __init__(self, folder: str | Path, cfg: MonitorSection, served: list, profiles: dict[str, dict]):
        """``served``: the server's ServedModel objects; ``profiles``: their reference profiles by name."""
        self.cfg = cfg
        self.limits = Thresholds.from_config(cfg)
        self.models = {
            m.name: _Model(m.name, m.version, profiles[m.name], m.predictor.manifest["preprocessing"]) for m in served
        }
        self.conn = log.create(folder, {(m.name, m.version): profiles[m.name] for m in served})
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.queued = self.handled = 0  # each written by one thread only: their difference is the backlog
        self.requests = itertools.count(random.getrandbits(40) << 22)  # ids unique across restarts
        self.random = random.Random()
        self.gauges: Gauges | None = None
        self.thread = threading.Thread(target=self._work, name="monitor", daemon=True)
        self.thread.start()

    def attach(self, registry: CollectorRegistry) -> None:
        self.gauges = Gauges(registry)

    def observe(
        self, served, images: np.ndarray, logits: np.ndarray, latency_s: float, sizes: np.ndarray | None = None
    ) -> None:
        """Called on the event loop once a request's logits are known: sample and hand over.
        ``sizes``: each image's ``size`` feature as sent, None when it came as a tensor."""
        rate = self.cfg.sample_rate
        if rate < 1.0:
            keep = [i for i in range(len(images)) if self.random.random() < rate]
            if not keep:
                return
            images, logits = images[keep], logits[keep]
            sizes = None if sizes is None else sizes[keep]
        if self.queued - self.handled + len(images) > self.cfg.max_pending:
            if self.gauges is not None:
                self.gauges.dropped.inc(len(images))
            return
        self.queued += len(images)
        self.queue.put((time.time(), served.name, next(self.requests), latency_s * 1e3, images, logits, sizes))

    def close(self) -> None:
        """Write what is left and stop (graceful shutdown: nothing is lost)."""
        self.queue.put(_STOP)
        self.thread.join()
        self.conn.close()

    # ------------------------------------------------------------ the writer thread

    def _work(self) -> None:
        rows: list[tuple] = []
        first = 0.0
        running = True
        while running:
            wait = None if not rows else max(0.0, first + self.cfg.flush_s - time.monotonic())
            items, running = self._take(wait, self.cfg.flush_rows - len(rows))
            if items:
                first = first if rows else time.monotonic()
                for name, group in itertools.groupby(items, key=lambda item: item[1]):
                    rows += self._rows(name, list(group))
            due = len(rows) >= self.cfg.flush_rows or time.monotonic() - first >= self.cfg.flush_s
            if rows and (due or not running):
                self._flush(rows)
                rows = []

    def _take(self, wait: float | None, room: int) -> tuple[list, bool]:
        """The next item (waiting up to ``wait`` s) and whatever is queued behind it, up to ``room``
        images: under load the numpy work then runs once over many requests instead of once each.
        The flag is False once the server asked the writer to stop."""
        items: list = []
        try:
            item = self.queue.get(timeout=wait)
            while item is not _STOP:
                items.append(item)
                room -= len(item[4])
                if room <= 0:
                    return items, True
                item = self.queue.get_nowait()
            return items, False
        except queue.Empty:
            return items, True

    def _flush(self, rows: list[tuple]) -> None:
        try:
            log.insert(self.conn, rows)
        except Exception:  # noqa: BLE001 - a full disk must not take the server down; it is logged
            logger.exception("could not write %d rows to the prediction log", len(rows))
            with contextlib.suppress(Exception):
                self.conn.execute("ROLLBACK")

    def _rows(self, name: str, items: list[tuple]) -> list[tuple]:
        """Rows of consecutive requests to one model, features computed over all their images at once."""
        model = self.models[name]
        images = np.concatenate([item[4] for item in items])
        logits = np.concatenate([item[5] for item in items])
        n = len(images)
        self.handled += n
        inputs = feats.input_features(images, model.mean, model.std)
        inputs[feats.SIZE] = np.concatenate(
            [np.full(len(item[4]), np.nan) if item[6] is None else item[6] for item in items]
        ).astype(np.float64)
        outputs = feats.output_features(logits, model.to_embedding)
        per_request = [(stamp, request, latency) for stamp, _, request, latency, part, *_ in items for _ in part]
        stamps, requests, latencies = zip(*per_request, strict=True)
        columns = [_nullable(inputs[f]) if f in inputs else [None] * n for f in log.FEATURE_COLUMNS]
        embedding = outputs.get("embedding")
        embeddings = [None] * n if embedding is None else [row.tobytes() for row in embedding.astype(np.float32)]
        pngs = self._pngs(images, model) if self.cfg.keep_inputs else [None] * n
        rows = list(
            zip(
                stamps,
                [name] * n,
                [model.version] * n,
                requests,
                latencies,
                outputs["label"].tolist(),
                outputs["confidence"].tolist(),
                *columns,
                embeddings,
                pngs,
                strict=True,
            )
        )
        self._update_live(model, {**inputs, **outputs})
        if self.gauges is not None:
            self.gauges.logged.labels(name).inc(n)
        return rows

    def _pngs(self, images: np.ndarray, model: _Model) -> list[bytes]:
        out = []
        for pixels in feats.to_uint8_images(images, model.mean, model.std):
            buffer = io.BytesIO()
            Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(buffer, "PNG")
            out.append(buffer.getvalue())
        return out

    def _update_live(self, model: _Model, batch: dict[str, np.ndarray]) -> None:
        """Keep the last window of rows; score it every ``step`` rows for the gauges."""
        window = self.cfg.window
        for key, values in batch.items():
            old = model.recent.get(key)
            model.recent[key] = values if old is None else np.concatenate([old, values])[-window:]
        model.since_scored += len(batch["label"])
        if self.gauges is None or len(model.recent["label"]) < window:
            return
        step = self.cfg.step or window
        if model.since_scored >= step:
            model.since_scored %= step  # the overshoot counts towards the next one: a score every `step` rows
            self.gauges.show(model.name, score_window(model.profile, model.recent, self.limits))


def _nullable(values: np.ndarray) -> list:
    """NaN (a size not known) as SQL NULL, so SQL's avg() and count() skip it."""
    return [None if v != v else v for v in values.tolist()]


def start_monitor(served: list, cfg: MonitorSection) -> Monitor:
    """Each served model's reference profile (computed now if its package has none), then the log."""
    from modelcycle.monitor.profile import read_profile, write_profile
    from modelcycle.progress import info

    profiles = {}
    for m in served:
        profiles[m.name] = read_profile(m.path)
        if profiles[m.name] is None:
            info(f"computing the reference profile of {m.name} (once; it is kept in its package)")
            profiles[m.name] = write_profile(m.path, cfg)
    monitor = Monitor(cfg.dir, cfg, served, profiles)
    info(
        f"monitoring: {cfg.sample_rate:.0%} of images logged to {log.db_path(cfg.dir)}; drift is scored on the "
        f"last {cfg.window} (monitor.window) every {cfg.step or cfg.window} images, from the first {cfg.window}"
    )
    return monitor
