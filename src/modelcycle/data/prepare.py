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

from modelcycle.data.duplicates import (
    ImageFacts,
    conflict_warning,
    dropped_by_dedupe,
    file_id,
    find_groups,
    near_groups,
    probe_file,
    report,
    split_units,
    summary_line,
)
from modelcycle.data.images import IMAGE_SUFFIXES
from modelcycle.data.manifest import SPLITS, read_classes
from modelcycle.errors import DataError
from modelcycle.progress import info, progress_bar, warn


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


def _verify(
    files: list[tuple[Path, int]], near: bool
) -> tuple[list[tuple[Path, int, ImageFacts]], list[tuple[Path, str]]]:
    """Decode and hash every file, in one process per core with files handed out in chunks: small
    images decode mostly under the GIL, so threads would queue behind each other. Names of one file
    on disk (hard links, links) are decoded once."""
    ids = [file_id(path) for path, _ in files]
    owner_of: dict[tuple[int, int], int] = {}
    owner = [owner_of.setdefault(key, i) if key else i for i, key in enumerate(ids)]
    unique = [i for i in range(len(files)) if owner[i] == i]
    processes = min(os.cpu_count() or 1, max(1, len(unique) // 500))
    chunk = 256
    chunks = [[(files[i][0], near) for i in unique[j : j + chunk]] for j in range(0, len(unique), chunk)]
    outcomes: dict[int, ImageFacts | str] = {}
    with contextlib.ExitStack() as stack:
        advance = stack.enter_context(progress_bar("verifying images", len(unique)))
        if processes > 1:
            pool = stack.enter_context(ProcessPoolExecutor(processes, mp_context=get_context("fork")))
            results = pool.map(_probe_chunk, chunks)
        else:
            results = map(_probe_chunk, chunks)
        done = 0
        for outcome in results:
            outcomes.update(zip(unique[done : done + len(outcome)], outcome, strict=True))
            done += len(outcome)
            advance(len(outcome))
    good, bad = [], []
    for i, (path, label) in enumerate(files):
        result = outcomes[owner[i]]
        if isinstance(result, str):
            bad.append((path, result))
        else:
            good.append((path, label, result._replace(file_id=ids[i])))
    return good, bad


def _probe_chunk(paths: list[tuple[Path, bool]]) -> list[ImageFacts | str]:
    out: list[ImageFacts | str] = []
    for path, near in paths:
        try:
            out.append(probe_file(path, near))
        except DataError as exc:
            out.append(str(exc))
    return out


def stratified_split(
    labels: list[int], fractions: dict[str, float], seed: int, units: list[int] | None = None
) -> dict[str, list[int]]:
    """Split indices per class with a seeded shuffle: the same seed gives the same split.

    Each class keeps at least one training image; held-out splits get ``round(n * fraction)``
    images of a class (at least one when the fraction is positive and the class has room).
    Indices with one ``units`` id (copies of one image) move together: a unit counts under its
    first index's class and joins a held-out split only whole, where it fits in that split's share;
    units that fit nowhere stay in train, so no copy is both trained on and held out.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {name: [] for name in ("train", *fractions)}
    members: dict[int, list[int]] = {}
    for i, unit in enumerate(range(len(labels)) if units is None else units):
        members.setdefault(unit, []).append(i)
    by_class: dict[int, list[int]] = {}
    for unit, indices in members.items():
        by_class.setdefault(labels[indices[0]], []).append(unit)
    for label in sorted(by_class):
        left = np.array(by_class[label])
        rng.shuffle(left)
        total = sum(len(members[unit]) for unit in left)
        start = 0
        for name, fraction in fractions.items():
            take = int(round(total * fraction))
            if fraction > 0 and take == 0 and total - start > 1:
                take = 1
            take = min(take, total - start - 1)
            chosen, count = [], 0
            for position, unit in enumerate(left):
                if count + len(members[unit]) <= take:
                    chosen.append(position)
                    count += len(members[unit])
                if count == take:
                    break
            out[name].extend(i for unit in left[chosen] for i in members[unit])
            left = np.delete(left, chosen)
            start += count
        out["train"].extend(i for unit in left for i in members[unit])
    return {name: sorted(indices) for name, indices in out.items()}


def prepare(
    src: str | Path,
    out: str | Path,
    val: float = 0.2,
    test: float = 0.0,
    seed: int = 0,
    dedupe: bool = False,
    near_duplicates: bool = False,
) -> PrepareResult:
    """Scan ``src`` (class folders, or a manifest file), verify images, write the split to ``out``.

    Files with identical bytes are listed in ``duplicates.json`` and kept in one split, or with
    ``dedupe`` one of each is kept (none of one in several class folders). ``near_duplicates``
    also lists look-alike pictures (a perceptual hash), only reported."""
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

    good, bad = _verify(files, near_duplicates)
    rejected = rejected_early + [(_rel(p, image_root), reason) for p, reason in bad]
    _check_classes(classes, [label for _, label, _ in good], src, rejected)
    names = [(_rel(path, image_root), classes[label]) for path, label, _ in good]
    groups = find_groups([facts for _, _, facts in good], [label for _, label, _ in good])
    dropped = dropped_by_dedupe(groups) if dedupe else set()
    kept = [i for i in range(len(good)) if i not in dropped]
    if dropped:
        _check_classes(classes, [good[i][1] for i in kept], src, [], "after --dedupe dropped the label conflicts")
    units = None if dedupe else split_units(len(good), groups)
    fractions = {name: f for name, f in (("val", val), ("test", test)) if f > 0}
    split = stratified_split([good[i][1] for i in kept], fractions, seed, units)
    split = {name: [kept[i] for i in indices] for name, indices in split.items()}  # back to indices of good
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:  # a stale test.txt from an earlier prepare must not survive
        (out / f"{name}.txt").unlink(missing_ok=True)
    for name, indices in split.items():
        lines = [f"{names[i][0]}\t{good[i][1]}" for i in indices]
        (out / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
    (out / "classes.txt").write_text("".join(c + "\n" for c in classes))
    (out / "rejected.txt").write_text("".join(f"{p}\t{r}\n" for p, r in rejected))
    split_of = {i: name for name, indices in split.items() for i in indices}
    near = near_groups([facts for _, _, facts in good]) if near_duplicates else None
    found = report(groups, [facts for _, _, facts in good], names, split_of, dedupe, near)
    (out / "duplicates.json").write_text(json.dumps(found, indent=2))

    counts = {
        name: {classes[c]: n for c, n in sorted(Counter(good[i][1] for i in indices).items())}
        for name, indices in split.items()
    }
    stats = _stats([good[i] for i in kept], classes, counts, image_root, rejected, seed, fractions)
    stats["duplicates"] = found["summary"]
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    if rejected:
        warn(
            f"{len(rejected)} file(s) rejected; see {out / 'rejected.txt'} (first: {rejected[0][0]}: {rejected[0][1]})"
        )
    if groups or near:
        info(summary_line(found["summary"], out / "duplicates.json"))
    if found["summary"]["conflict_groups"]:
        warn(conflict_warning(groups, names, dedupe, out / "duplicates.json"))
    return PrepareResult(out, classes, counts, rejected, stats)


def _check_classes(classes: list[str], labels: list[int], src: Path, rejected: list, why: str = "") -> None:
    per_class = Counter(labels)
    empty = [name for i, name in enumerate(classes) if per_class[i] == 0]
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(empty)} in {src} have no readable images{' ' + why if why else ''}"
            f"{' (see the reasons below)' if rejected else ''}; add images or remove the folder"
            + "".join(f"\n  {p}: {r}" for p, r in rejected[:10])
        )


def _rel(path: Path, root: Path) -> str:
    absolute = Path(os.path.abspath(path))
    return str(absolute.relative_to(root)) if absolute.is_relative_to(root) else str(absolute)


def _stats(good, classes, counts, image_root, rejected, seed, fractions) -> dict:
    widths = [facts.width for _, _, facts in good]
    heights = [facts.height for _, _, facts in good]
    modes = Counter(facts.mode for _, _, facts in good)
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
