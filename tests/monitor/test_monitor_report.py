"""The monitor's report on a prediction log written here (no server): an empty report says how many
images there are and how many a window needs, each verdict names the test that decided it, the
default window suits a small service, and the plots read at a glance."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.config import MonitorSection
from modelcycle.monitor import log, watch
from modelcycle.monitor.drift import Thresholds, bin_edges, bins_for, psi_reason, score_window, shares
from modelcycle.monitor.report import plot_classes, plot_drift, plot_traffic

REFERENCE = np.random.default_rng(0).normal(size=1000)


def feature(values: np.ndarray) -> dict:
    edges = bin_edges(values)
    return {"mean": float(values.mean()), "edges": edges.tolist(), "shares": shares(values, edges).tolist(),
            "sample": values.tolist()}  # fmt: skip


def profile() -> dict:
    """brightness standard normal; confidence near 1; two classes half and half."""
    confidence = 1 - np.random.default_rng(1).beta(1, 12, 1000)
    return {
        "features": {"brightness": feature(REFERENCE), "confidence": feature(confidence)},
        "classes": ["cat", "dog"],
        "class_shares": [0.5, 0.5],
        "ood": {"threshold": float(np.quantile(confidence, 0.05)), "quantile": 0.05},
    }


def write_log(folder: Path, brightness: np.ndarray) -> Path:
    """One row per value, as the server logs them: model "pets", one request per 4 images."""
    rng = np.random.default_rng(2)
    conn = log.create(folder, {("pets", "v1"): profile()})
    rows = []
    for i, value in enumerate(brightness):
        features = [float(value) if name == "brightness" else None for name in log.FEATURE_COLUMNS]
        confidence = float(1 - rng.beta(1, 12))
        rows.append(
            (time.time(), "pets", "v1", i // 4, 5.0, int(rng.integers(0, 2)), confidence, *features, None, None)
        )
    log.insert(conn, rows)
    conn.close()
    return folder


def cli(*args) -> str:
    result = CliRunner().invoke(app, ["monitor", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.stderr


def test_an_empty_report_says_how_many_images_a_window_needs(tmp_path: Path):
    folder = write_log(tmp_path / "log", REFERENCE[:12])
    summary = watch.report(folder, MonitorSection())
    expected = "12 images so far; a window needs 200 (monitor.window), 188 more to go"
    assert summary["windows"] == [] and summary["note"] == expected
    assert expected in (folder / "monitor.md").read_text()
    assert expected in (folder / "monitor.html").read_text()
    assert f"no complete window yet: {expected}" in " ".join(cli(folder).split())
    assert "12 images so far; a window needs 50" in " ".join(cli(folder, "--window", "50").split())
    watched = CliRunner().invoke(app, ["monitor", str(folder), "--watch", "--duration", "0"])
    assert watched.exit_code == 0 and expected in " ".join(watched.stderr.split())


def test_the_default_window_is_one_a_small_service_fills():
    assert MonitorSection().window == 200


def test_small_windows_get_fewer_bins_so_unchanged_data_stays_under_the_warn_level():
    """PSI on unchanged data is about (bins - 1) / n: ten bins over 50 images would read 0.18, a warn
    on every window. With the bins merged to fit the window it stays under 0.1, and a real shift
    is still caught."""
    assert [bins_for(n) for n in (10, 50, 100, 199, 200, 5000)] == [2, 2, 5, 9, 10, 10]
    ref = profile()
    rng = np.random.default_rng(3)
    calm, moved = [], []
    for _ in range(200):
        values = rng.normal(size=50)
        window = {"brightness": values, "confidence": 1 - rng.beta(1, 12, 50), "label": rng.integers(0, 2, 50)}
        calm.append(score_window(ref, window, Thresholds())["features"]["brightness"])
        moved.append(score_window(ref, {**window, "brightness": values + 1.0}, Thresholds())["features"]["brightness"])
    assert {s["bins"] for s in calm} == {2}
    assert np.mean([s["psi"] for s in calm]) < 0.05
    assert np.mean([s["drift"] == "drift" for s in moved]) > 0.95


def test_psi_reason_names_the_deciding_test_and_the_ks_p_beside_it():
    limits = Thresholds()
    assert (
        psi_reason(0.31, 0.71, limits)
        == "PSI 0.31 >= 0.2; KS p=0.71 not significant (PSI decides, KS is reported only)"
    )
    assert psi_reason(0.03, 0.001, limits).startswith("PSI 0.03 < 0.1; KS p=0.001 significant")
    assert psi_reason(0.15, 0.2, limits).startswith("PSI 0.15 between 0.1 (warn) and 0.2")


def alternating_window() -> np.ndarray:
    """200 reference values, three from every even decile for one from every odd one: the CDF never
    strays more than 5 % from the reference's (KS sees nothing), the bin shares do (PSI ~0.27)."""
    edges = bin_edges(REFERENCE)
    bins = np.searchsorted(edges, REFERENCE, side="left")
    rng = np.random.default_rng(4)
    return np.concatenate([rng.choice(REFERENCE[bins == b], 30 if b % 2 == 0 else 10) for b in range(10)])


def test_a_verdict_says_which_test_decided_it(tmp_path: Path):
    folder = write_log(tmp_path / "log", alternating_window())
    summary = watch.report(folder, MonitorSection())
    (window,) = summary["windows"]
    brightness = window["features"]["brightness"]
    assert brightness["drift"] == "drift" and brightness["test"] == "PSI" and brightness["ks_p"] > 0.05, brightness
    assert brightness["reason"].startswith(f"PSI {brightness['psi']:.3g} >= 0.2; KS p=")
    assert "not significant (PSI decides" in brightness["reason"]
    for name, scores in window["features"].items():  # every test says what decided
        assert scores["reason"] and scores["drift"] in ("ok", "warn", "drift"), name
    md = (folder / "monitor.md").read_text()
    assert "decided by" in md and f"| brightness | PSI {brightness['psi']:.3f} over 10 bins" in md
    assert brightness["reason"] in md
    out = " ".join(cli(folder).split())  # as one line, however the console wrapped it
    assert "window 0: brightness drift: PSI" in out and "1 complete window of 200 images" in out


def test_the_plots_have_whole_window_ticks_labels_and_a_legend_clear_of_the_lines(tmp_path: Path):
    rng = np.random.default_rng(5)
    windows = []
    for index in range(6):
        window = {"brightness": rng.normal(loc=0.2 * index, size=200), "label": rng.integers(0, 2, 200)}
        window["confidence"] = 1 - rng.beta(1, 12, 200)
        result = score_window(profile(), window, Thresholds())
        counts = np.bincount(window["label"], minlength=2).tolist()
        windows.append({"index": index, "requests": 50, "latency_p50_ms": 5.0, "latency_p99_ms": 9.0, "images": 200,
                        "class_counts": counts, **result})  # fmt: skip
    figures = [
        plot_traffic(windows, tmp_path / "traffic.png"),
        plot_drift(windows, Thresholds(), tmp_path / "drift.png"),
        plot_classes(windows, [0.5, 0.5], ["cat", "dog"], tmp_path / "classes.png"),
    ]
    for fig in figures:
        fig.canvas.draw()
        for ax in fig.axes:
            assert ax.get_title(), ax
            if not ax.axison:  # the embedding panel: the profile has none, and it says so
                assert "no embedding" in " ".join(t.get_text() for t in ax.texts)
                continue
            assert ax.get_xlabel() == "window" and ax.get_ylabel(), ax.get_title()
            low, high = sorted(ax.get_xlim())
            ticks = [t for t in ax.get_xticks() if low <= t <= high]
            assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
    psi_ax = next(ax for ax in figures[1].axes if ax.get_title() == "PSI per feature")
    legend = psi_ax.get_legend().get_window_extent()
    plot_area = psi_ax.get_window_extent()
    assert legend.x0 >= plot_area.x1 or legend.y1 <= plot_area.y0, (legend, plot_area)  # beside or below it
    assert legend.x1 <= figures[1].bbox.x1  # and inside the picture
    assert {"brightness", "warn (PSI 0.1)", "drift (PSI 0.2)"} <= {
        t.get_text() for t in psi_ax.get_legend().get_texts()
    }


def test_the_note_counts_towards_the_next_window():
    assert watch.progress_note(450, 200, 200) == (
        "2 complete windows of 200 images; the next is complete at 600, 150 more to go"
    )
    assert (
        watch.progress_note(450, 200, 100)
        == "3 complete windows of 200 images; the next is complete at 500, 50 more to go"
    )
