"""Shared helpers for the benchmark scripts: timing, tables, verdicts and synthetic image folders.

The scripts import this module as ``common`` (``python benchmarks/bench_X.py`` puts this folder
first on ``sys.path``). Benchmarks are reports, not tests: they always exit 0 and say PASS or
BELOW TARGET in words.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks for updates at import

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "src") not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(1, str(REPO / "src"))

# a wide fixed width when piped (CI logs, `| tee`), so tables do not wrap
console = Console(highlight=False, width=None if sys.stdout.isatty() else 240)


# ---------------------------------------------------------------- command line


def make_parser(description: str, quick_help: str, temp_files: bool = True) -> argparse.ArgumentParser:
    """A parser with the options the benchmarks share: --quick, --threads, and --workdir/--keep
    for those that write temporary files."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch.set_num_threads for the whole process (both sides use the same)",
    )
    if temp_files:
        parser.add_argument(
            "--workdir",
            type=Path,
            default=None,
            help="parent folder for temporary files (None: the system temp folder)",
        )
        parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print where it is")
    return parser


def quick_default(args: argparse.Namespace, name: str, quick_value) -> None:
    """Use ``quick_value`` for ``args.<name>`` under --quick unless the user gave the option."""
    flag = "--" + name.replace("_", "-")
    given = any(a == flag or a.startswith(flag + "=") for a in sys.argv[1:])
    if args.quick and not given:
        setattr(args, name, quick_value)


def set_threads(threads: int) -> int:
    import torch

    torch.set_num_threads(threads)
    return torch.get_num_threads()


def environment_line(threads: int | None = None) -> str:
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    parts = [
        f"python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"{os.cpu_count()} CPU cores",
        f"load average {load:.2f}",
    ]
    if threads is not None:
        parts.insert(2, f"torch threads {threads}")
    return "environment: " + ", ".join(parts)


# ---------------------------------------------------------------- timing


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """Run ``fn`` once; (its result, wall seconds)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def alternate(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call each measurement ``rounds`` times, interleaved and with the order flipped every round
    (A B, B A, A B ...), so that a slow spell on a busy machine hits both sides alike.

    Each callable returns the figure it measured (seconds or a rate); lists come back per name.
    """
    names = list(runs)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(runs[name]())
    return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """``min..max`` of a list, for showing how noisy the rounds were."""
    return f"{min(values):,.1f}..{max(values):,.1f}" if values else "-"


# ---------------------------------------------------------------- output


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]], note: str = "") -> None:
    """One table on stdout, numbers right-aligned (no colours when stdout is not a terminal)."""
    table = Table(title=title, caption=note or None, caption_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    console.print(table)


def fmt(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        if abs(value) >= 1e-3:
            return f"{value:.3f}"
        return f"{value:.1e}"
    return str(value)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def warn_if_busy(load_before: float, meaning: str) -> None:
    """A warning when the load average taken before the script's own work (``os.getloadavg()[0]``)
    was over half the cores: other jobs shared them, and ``meaning`` says what that spoils."""
    cores = os.cpu_count() or 1
    if load_before > 0.5 * cores:
        console.print(
            f"WARNING: the machine was busy (load average {load_before:.1f} on {cores} cores) before this "
            f"script started: {meaning}",
            style="bold yellow",
        )


def verdict(passed: bool, text: str) -> bool:
    """One line: ``PASS: text`` or ``BELOW TARGET: text``."""
    label = "[bold green]PASS[/]" if passed else "[bold red]BELOW TARGET[/]"
    console.print(f"{label}: {text}")
    return passed


# ---------------------------------------------------------------- temporary folders


@contextlib.contextmanager
def temp_dir(prefix: str, parent: Path | None = None, keep: bool = False) -> Iterator[Path]:
    """A fresh folder, removed afterwards unless ``keep``."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"modelcycle-bench-{prefix}-", dir=parent))
    try:
        yield path
    finally:
        if keep:
            console.print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def _photo(rng: np.random.Generator, size: int) -> np.ndarray:
    """A photo-like RGB picture: smooth colour gradients (a bicubic-upscaled 6x6 field) + grain."""
    field = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(field).resize((size, size), Image.BICUBIC), dtype=np.float32)
    grain = rng.normal(0.0, 6.0, (size, size, 1)).astype(np.float32)  # luminance grain, like a sensor
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def _small(rng: np.random.Generator, size: int) -> np.ndarray:
    """A small RGB picture: a gradient between two random colours plus noise."""
    a, b = rng.integers(0, 256, (2, 3)).astype(np.float32)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :, None]
    image = a + (b - a) * t + rng.normal(0.0, 10.0, (size, size, 3)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_image_folder(
    root: Path,
    count: int,
    size: int,
    classes: int,
    suffix: str = ".jpg",
    quality: int = 90,
    photo: bool = True,
    seed: int = 0,
) -> list[Path]:
    """Write ``count`` images in ``classes`` class folders (``root/class_k/000123.jpg``).

    ``photo=True`` draws smooth photo-like pictures, otherwise small gradients with noise.
    Files are written by a few threads (Pillow encodes without the GIL); returns their paths.
    """
    names = [f"class_{k}" for k in range(classes)]
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    draw = _photo if photo else _small
    options = {"quality": quality} if suffix.lower() in (".jpg", ".jpeg") else {}

    def one(index: int) -> Path:
        rng = np.random.default_rng([seed, index])
        path = root / names[index % classes] / f"{index:06d}{suffix}"
        Image.fromarray(draw(rng, size)).save(path, **options)
        return path

    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        return list(pool.map(one, range(count)))


def folder_size_mb(paths: Sequence[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 2**20


# ---------------------------------------------------------------- models on the bundled digits

RESNET18_ON_DIGITS = ["model.name=resnet18", "model.args={}", "train.lr=0.002"]


def digits_data(root: Path) -> Path:
    """The bundled digits as a prepared folder, ``root/data`` (the same split every time)."""
    from modelcycle import prepare, write_digits

    write_digits(root / "raw")
    prepare(root / "raw", root / "data", val=0.2, seed=0)
    return root / "data"


def train_on_digits(root: Path, name: str, overrides: Sequence[str]) -> Path:
    """``configs/digits.yaml`` plus ``overrides`` on ``digits_data(root)``; returns the run folder."""
    from modelcycle import load_config, train

    paths = [f"data.root={root / 'data'}", f"run.dir={root / 'runs'}", f"run.name={name}"]
    console.print(f"training {name} on digits 16 px ...", style="dim")
    return train(load_config(REPO / "configs" / "digits.yaml", [*paths, *overrides]), progress=False).path
