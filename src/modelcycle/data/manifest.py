"""Prepared dataset folders: ``train.txt``/``val.txt``/``test.txt`` manifests + ``classes.txt``.

A manifest line is ``relative/path<TAB>class_index``; relative paths are resolved against the
image folder recorded in ``stats.json`` (``image_root``), so a prepared folder never copies images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from modelcycle.errors import DataError

SPLITS = ("train", "val", "test")


def read_classes(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} not found; a prepared data folder needs classes.txt (run `modelcycle prepare`)")
    classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not classes:
        raise DataError(f"{path} is empty; it must list one class name per line")
    return classes


def read_manifest(path: Path, image_root: Path, num_classes: int) -> list[tuple[Path, int]]:
    """Parse and check a manifest; every problem names the file and line and says what to do."""
    if not path.is_file():
        raise DataError(f"manifest {path} not found")
    items: list[tuple[Path, int]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 2:
            raise DataError(f"{where}: expected 'relative/path<TAB>class_index', got {line!r}")
        rel, label = parts
        try:
            index = int(label)
        except ValueError:
            raise DataError(f"{where}: class index {label!r} is not a whole number") from None
        if not 0 <= index < num_classes:
            raise DataError(
                f"{where}: class index {index} is out of range 0..{num_classes - 1} "
                f"(classes.txt lists {num_classes} classes); fix the line or run `modelcycle prepare` again"
            )
        image = Path(rel) if Path(rel).is_absolute() else image_root / rel
        if not image.is_file():
            raise DataError(f"{where}: image {image} does not exist; fix the path or run `modelcycle prepare` again")
        items.append((image, index))
    return items


@dataclass
class PreparedData:
    """A folder written by ``modelcycle prepare``."""

    root: Path
    classes: list[str]
    stats: dict = field(default_factory=dict)

    @classmethod
    def open(cls, root: str | Path) -> PreparedData:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"data folder {root} not found; create it with `modelcycle prepare IMAGES --out {root}`")
        classes = read_classes(root / "classes.txt")
        stats_path = root / "stats.json"
        stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
        return cls(root, classes, stats)

    @property
    def image_root(self) -> Path:
        return Path(self.stats.get("image_root", self.root))

    @property
    def channels(self) -> int:
        return int(self.stats.get("channels", 3))

    def copy_groups(self) -> dict[Path, int]:
        """Image path (as :meth:`split` gives it) -> its group of identical files, from
        ``duplicates.json``: whoever re-splits the images (crossval's folds) keeps a group together."""
        listing = self.root / "duplicates.json"
        if not listing.is_file():
            return {}
        groups = json.loads(listing.read_text()).get("groups", [])
        return {
            self.image_root / entry["path"]: number
            for number, group in enumerate(groups)
            for entry in group["files"]
            if entry["split"] is not None  # a copy --dedupe dropped is in no manifest
        }

    def has_split(self, split: str) -> bool:
        return (self.root / f"{split}.txt").is_file()

    def split(self, split: str) -> list[tuple[Path, int]]:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if not self.has_split(split):
            raise DataError(
                f"{self.root} has no {split}.txt; prepare it with "
                f"`modelcycle prepare ... --{split} 0.2` or pass --data MANIFEST"
            )
        return read_manifest(self.root / f"{split}.txt", self.image_root, len(self.classes))
