"""Helpers shared by the tests: generated image folders, tiny configs, running the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from modelcycle.engine.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
VENV_CLI = REPO / ".venv" / "bin" / "modelcycle"

# Square side and its top-left corner per class: the class is where the bright square sits.
# Positions differ vertically, so a horizontal flip keeps the class recognisable.
SQUARE = 6
CORNERS = [(1, 5), (9, 5), (5, 1), (5, 9)]  # (row, col)
COLOURS = [(255, 60, 60), (60, 255, 60), (60, 60, 255), (255, 255, 60)]


def class_image(label: int, rng: np.random.Generator, size: int = 16, mode: str = "RGB") -> Image.Image:
    """A dark noisy picture with a bright square whose position (and colour) depends on ``label``."""
    pixels = rng.integers(0, 50, (size, size, 3)).astype(np.int32)
    scale = size / 16
    row, col = (int(v * scale) for v in CORNERS[label % len(CORNERS)])
    side = max(2, int(SQUARE * scale))
    pixels[row : row + side, col : col + side] += np.array(COLOURS[label % len(COLOURS)]) - 40
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image.convert(mode) if mode != "RGB" else image


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` and which holds no pixels at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def make_image_folder(
    root: Path,
    classes: int = 3,
    per_class: int = 12,
    size: int = 16,
    mode: str = "RGB",
    fmt: str = "png",
    seed: int = 0,
) -> Path:
    """Write ``root/class_<i>/<n>.<fmt>``: real image files a small model can learn."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(exist_ok=True)
        for n in range(per_class):
            image = class_image(label, rng, size, mode)
            if fmt in ("jpg", "jpeg"):
                image.save(folder / f"{n:03d}.{fmt}", quality=95)
            else:
                image.save(folder / f"{n:03d}.{fmt}")
    return root


def tiny_overrides(data_root: Path, runs_dir: Path, name: str = "tiny", **extra) -> list[str]:
    """Overrides for a run that takes seconds: 16 px, a narrow CNN, no worker processes.

    ``extra`` uses ``__`` for the dot: ``train__epochs=3``.
    """
    values = {
        "data.root": str(data_root),
        "data.image_size": 16,
        "data.workers": 0,
        "data.hflip": "false",
        "data.color_jitter": 0.0,
        "data.crop_scale": "[0.9,1.0]",
        "model.name": "simple_cnn",
        "model.args": "{width: 8, dropout: 0.0}",
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.lr": 0.01,
        "train.warmup_epochs": 0,
        "train.device": "cpu",
        "train.log_every": 2,
        "eval.batch_size": 64,
        "run.dir": str(runs_dir),
        "run.name": name,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


LINEAR_MODEL = '''
import torch
from torch import nn


def build(in_channels, num_classes, image_size):
    """No BatchNorm, no dropout: every forward is a pure function of the weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))
'''


# ---------------------------------------------------------------- command line


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    env.pop("FORCE_COLOR", None)
    return env


def cli_command() -> list[str]:
    """The installed ``modelcycle`` command (the checkout's .venv), else this Python's module."""
    return [str(VENV_CLI)] if VENV_CLI.exists() else [sys.executable, "-m", "modelcycle"]


def run_cli(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed ``modelcycle`` command in a fresh process."""
    return subprocess.run(
        [*cli_command(), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=cli_env(), timeout=timeout
    )


def flat(text: str) -> str:
    """Text without any whitespace: rich wraps long messages at the console width."""
    return re.sub(r"\s+", "", text)


def assert_mentions(text: str, *fragments: str | Path) -> None:
    for fragment in fragments:
        assert flat(str(fragment)) in flat(text), f"{str(fragment)!r} not in:\n{text}"


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str | Path) -> str:
    """Exit code 2, an 'error:' message, no Python traceback, and the message names ``fragments``."""
    assert result.returncode == 2, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert "error:" in result.stderr, result.stderr
    assert_mentions(result.stderr, *fragments)
    return result.stderr


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def b64_file(path: Path) -> str:
    """A file as the base64 text the HTTP API takes."""
    import base64

    return base64.b64encode(Path(path).read_bytes()).decode()


class InterruptAt(Callback):
    """Sends this process a real SIGINT after optimizer step ``step``, like a user's Ctrl-C
    (the trainer saves a checkpoint and raises TrainingInterrupted)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer) -> None:
        if trainer.state.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def one_torch_thread():
    """For a fixture to ``yield from``: torch on one thread while it lasts. Two cores shared with
    other processes; one thread keeps OpenMP from spinning against them."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tampered_copy(package: Path, out: Path) -> Path:
    """A copy of a model package whose manifest records a wrong sha256 for its weights."""
    import shutil

    shutil.copytree(package, out)
    manifest = json.loads((out / "modelcycle.json").read_text())
    manifest["weights"]["sha256"] = "0" * 64
    (out / "modelcycle.json").write_text(json.dumps(manifest))
    return out


def copy_run(run: Path, root: Path) -> Path:
    """A copy of a run folder as ``root/runs/<name>``, for a test that writes into its run (an
    export, a report, a resume). ``root/images`` and ``root/data`` link to the originals beside
    the run, so paths relative to the run find them; the copy's config still names the original
    data folder."""
    import shutil

    copy = root / "runs" / run.name
    shutil.copytree(run, copy)
    for name in ("images", "data"):
        if (run.parents[1] / name).is_dir() and not (root / name).exists():
            (root / name).symlink_to(run.parents[1] / name, target_is_directory=True)
    return copy
