"""``modelcycle prepare``: scan class folders, verify every image, write a stratified split.

Unreadable files are never silently dropped and never crash the run: they go to
``rejected.txt`` with the reason, and the user is warned.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from modelcycle.data.images import IMAGE_SUFFIXES, probe_image
from modelcycle.data.manifest import SPLITS, read_classes
from modelcycle.errors import DataError
from modelcycle.progress import progress_bar, warn


@dataclass
class PrepareResult:
    out: Path
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> count
    rejected: list[tuple[str, str]]
    stats: dict


def _scan_folder(src: Path) -> tuple[list[str], list[tuple[Path, int]], list[tuple[str, str]]]:
    """Class folders under ``src`` -> (classes, candidate files, early rejections).

    Links are followed only while they stay inside ``src``; anything pointing outside is refused
    and listed, never silently skipped.
    """
    root = src.resolve()
    rejected: list[tuple[str, str]] = []
    class_dirs = []
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.resolve().is_relative_to(root):
            class_dirs.append(folder)
        else:
            rejected.append((folder.name, f"class folder links outside {src} ({folder.resolve()}); refused"))
    if not class_dirs:
        raise DataError(
            f"{src} has no class folders; lay images out as {src}/<class_name>/<image> (like flower_photos/daisy/*.jpg)"
        )
    files: list[tuple[Path, int]] = []
    for index, class_dir in enumerate(class_dirs):
        seen: set[Path] = set()
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            here = Path(dirpath)
            seen.add(here.resolve())
            kept = []
            for name in sorted(d for d in dirnames if not d.startswith(".")):
                target = (here / name).resolve()
                if not target.is_relative_to(root):
                    rejected.append((str((here / name).relative_to(src)), f"links outside {src} ({target}); refused"))
                elif target not in seen:  # a link back up the tree must not loop
                    kept.append(name)
            dirnames[:] = kept
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = here / name
                if os.path.islink(path) and not path.resolve().is_relative_to(root):
                    rejected.append((str(path.relative_to(src)), f"symlink points outside {src}; refused"))
                elif path.suffix.lower() not in IMAGE_SUFFIXES:
                    rejected.append((str(path.relative_to(src)), f"not an image file ({path.suffix or 'no suffix'})"))
                else:
                    files.append((path, index))
    return [d.name for d in class_dirs], files, rejected


def _read_source_manifest(src: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """A manifest file (``path<TAB>class name or index``) given instead of a folder."""
    classes_file = src.parent / "classes.txt"
    known = read_classes(classes_file) if classes_file.is_file() else None
    names: list[str] = list(known or [])
    files: list[tuple[Path, str]] = []
    for number, line in enumerate(src.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"{src}:{number}: expected 'path<TAB>class', got {line!r}")
        path = Path(parts[0]) if Path(parts[0]).is_absolute() else src.parent / parts[0]
        label = parts[1].strip()
        if known is not None and label.isdigit():
            if int(label) >= len(known):
                raise DataError(
                    f"{src}:{number}: class index {label} is out of range 0..{len(known) - 1} ({classes_file})"
                )
            label = known[int(label)]
        if not path.exists():
            raise DataError(f"{src}:{number}: image {path} does not exist; fix the path")
        files.append((path, label))
        if label not in names:
            names.append(label)
    if not files:
        raise DataError(f"{src} lists no images")
    classes = names if known is not None else sorted(names)
    index = {name: i for i, name in enumerate(classes)}
    return classes, [(p, index[c]) for p, c in files]


def _verify(files: list[tuple[Path, int]]) -> tuple[list[tuple[Path, int, tuple]], list[tuple[Path, str]]]:
    """Decode every file, in one process per core with files handed out in chunks: small images
    decode mostly under the GIL, so threads would queue behind each other."""
    good, bad = [], []
    processes = min(os.cpu_count() or 1, max(1, len(files) // 500))
    chunk = 256
    chunks = [[p for p, _ in files[i : i + chunk]] for i in range(0, len(files), chunk)]
    with contextlib.ExitStack() as stack:
        advance = stack.enter_context(progress_bar("verifying images", len(files)))
        if processes > 1:
            pool = stack.enter_context(ProcessPoolExecutor(processes, mp_context=get_context("fork")))
            results = pool.map(_probe_chunk, chunks)
        else:
            results = map(_probe_chunk, chunks)
        offset = 0
        for outcome in results:
            for (path, label), result in zip(files[offset : offset + len(outcome)], outcome, strict=True):
                if isinstance(result, str):
                    bad.append((path, result))
                else:
                    good.append((path, label, result))
            offset += len(outcome)
            advance(len(outcome))
    return good, bad


def _probe_chunk(paths: list[Path]) -> list[tuple[int, int, str] | str]:
    out: list[tuple[int, int, str] | str] = []
    for path in paths:
        try:
            out.append(probe_image(path))
        except DataError as exc:
            out.append(str(exc))
    return out


def stratified_split(labels: list[int], fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Split indices per class with a seeded shuffle: the same seed gives the same split.

    Each class keeps at least one training image; held-out splits get ``round(n * fraction)``
    images of a class (at least one when the fraction is positive and the class has room).
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {name: [] for name in ("train", *fractions)}
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    for label in sorted(by_class):
        members = np.array(by_class[label])
        rng.shuffle(members)
        start = 0
        for name, fraction in fractions.items():
            take = int(round(len(members) * fraction))
            if fraction > 0 and take == 0 and len(members) - start > 1:
                take = 1
            take = min(take, len(members) - start - 1)
            out[name].extend(members[start : start + take].tolist())
            start += take
        out["train"].extend(members[start:].tolist())
    return {name: sorted(indices) for name, indices in out.items()}


def prepare(src: str | Path, out: str | Path, val: float = 0.2, test: float = 0.0, seed: int = 0) -> PrepareResult:
    """Scan ``src`` (class folders, or a manifest file), verify images, write the split to ``out``."""
    src, out = Path(src), Path(out)
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise DataError(f"--val {val} and --test {test} must be fractions in [0, 1) that sum to less than 1")
    if not src.exists():
        raise DataError(f"{src} does not exist; pass a folder of class folders (flower_photos/daisy/*.jpg)")
    if src.is_dir() and not any(src.iterdir()):
        raise DataError(f"{src} is empty; put one folder of images per class inside it")
    if src.is_dir():
        classes, files, rejected_early = _scan_folder(src)
        image_root = src.resolve()
    else:
        classes, files = _read_source_manifest(src)
        rejected_early = []
        image_root = src.parent.resolve()

    good, bad = _verify(files)
    rejected = rejected_early + [(_rel(p, image_root), reason) for p, reason in bad]
    per_class = Counter(label for _, label, _ in good)
    empty = [name for i, name in enumerate(classes) if per_class[i] == 0]
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(empty)} in {src} have no readable images"
            f"{' (see the reasons below)' if rejected else ''}; add images or remove the folder"
            + "".join(f"\n  {p}: {r}" for p, r in rejected[:10])
        )

    fractions = {name: f for name, f in (("val", val), ("test", test)) if f > 0}
    split = stratified_split([label for _, label, _ in good], fractions, seed)
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:  # a stale test.txt from an earlier prepare must not survive
        (out / f"{name}.txt").unlink(missing_ok=True)
    for name, indices in split.items():
        lines = [f"{_rel(good[i][0], image_root)}\t{good[i][1]}" for i in indices]
        (out / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
    (out / "classes.txt").write_text("".join(c + "\n" for c in classes))
    (out / "rejected.txt").write_text("".join(f"{p}\t{r}\n" for p, r in rejected))

    counts = {
        name: {classes[c]: n for c, n in sorted(Counter(good[i][1] for i in indices).items())}
        for name, indices in split.items()
    }
    stats = _stats(good, classes, counts, image_root, rejected, seed, fractions)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    if rejected:
        warn(
            f"{len(rejected)} file(s) rejected; see {out / 'rejected.txt'} (first: {rejected[0][0]}: {rejected[0][1]})"
        )
    return PrepareResult(out, classes, counts, rejected, stats)


def _rel(path: Path, root: Path) -> str:
    absolute = Path(os.path.abspath(path))
    return str(absolute.relative_to(root)) if absolute.is_relative_to(root) else str(absolute)


def _stats(good, classes, counts, image_root, rejected, seed, fractions) -> dict:
    widths = [w for _, _, (w, _, _) in good]
    heights = [h for _, _, (_, h, _) in good]
    modes = Counter(mode for _, _, (_, _, mode) in good)
    grey = all(mode in ("1", "L", "I", "I;16", "F", "LA") for mode in modes)

    def summary(values: list[int]) -> dict:
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    return {
        "image_root": str(image_root),
        "classes": classes,
        "num_images": len(good),
        "num_rejected": len(rejected),
        "seed": seed,
        "fractions": fractions,
        "counts": counts,
        "channels": 1 if grey else 3,
        "modes": dict(modes),
        "width": summary(widths),
        "height": summary(heights),
    }
