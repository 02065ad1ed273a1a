"""Throughput and latency of a predictor, measured the same way by `bench` and benchmarks/."""

from __future__ import annotations

import time

import numpy as np


def throughput(predictor, batch: np.ndarray, seconds: float = 2.0) -> float:
    """Images per second calling ``predictor`` on ``batch`` for about ``seconds`` (after a warm-up)."""
    predictor(batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predictor(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)


def latency_ms(predictor, images: np.ndarray, calls: int = 200) -> tuple[float, float]:
    """p50 and p99 milliseconds of single-image calls (after a warm-up)."""
    predictor(images[:1])
    times = []
    for i in range(calls):
        one = images[i % len(images)][None]
        start = time.perf_counter()
        predictor(one)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))
