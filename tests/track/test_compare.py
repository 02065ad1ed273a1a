"""`modelcycle compare`: one PNG with every run's curves and a table of their figures and
differing settings; a folder of runs stands for all of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import assert_mentions, assert_user_error, run_cli
from modelcycle.errors import UserError
from modelcycle.track.compare import compare, panels


def _drawn(png: Path) -> float:
    """Share of pixels that are not white: an empty figure has only its frame and labels."""
    pixels = np.asarray(Image.open(png).convert("L"))
    return float((pixels < 250).mean())


def test_curves_of_all_runs_in_one_png(runs_dir: Path, tmp_path: Path):
    result = compare([runs_dir / "fast", runs_dir / "slow", runs_dir / "study"], out=tmp_path / "c.png")
    assert [s.name for s in result.runs] == [str(runs_dir / n) for n in ("fast", "slow", "study/trial-0001")]
    assert (result.metric, result.mode) == ("val_accuracy", "max")
    assert result.runs[1].differs == {"model.args.width": "8", "train.lr": "1e-05"}
    with Image.open(result.png) as image:
        assert image.size == (1200, 800)
    one = compare([runs_dir / "fast"], out=tmp_path / "one.png")
    assert _drawn(result.png) > _drawn(one.png) > 0.02  # three runs draw more than one, and one draws something


def test_a_loss_metric_keeps_accuracy_in_view():
    assert panels("val_loss") == ["train_loss", "val_loss", "val_accuracy", "lr"]
    assert panels("val_top5") == ["train_loss", "val_loss", "val_top5", "lr"]


def test_what_is_not_a_run_is_refused(runs_dir: Path, tmp_path: Path):
    with pytest.raises(UserError, match="holds no runs"):
        compare([runs_dir / "fast", runs_dir / "notes"], out=tmp_path / "c.png")
    with pytest.raises(UserError, match="PNG"):
        compare([runs_dir / "fast"], out=tmp_path / "c.jpg")


def test_cli_prints_the_table_and_where_the_png_is(runs_dir: Path, tmp_path: Path):
    result = run_cli("compare", runs_dir / "fast", runs_dir / "slow", "--metric", "val_loss", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "compare.png").stat().st_size > 20_000
    assert_mentions(result.stderr, "best = lowest val_loss", "last train_loss", "train.lr=1e-05", "curves: compare.png")
    assert_user_error(run_cli("compare", runs_dir / "notes", cwd=tmp_path), "notes", "holds no runs")
