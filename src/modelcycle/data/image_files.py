"""The image files a command line names: files, folders (walked for image files) and globs.

Globs are expanded here as well as by the shell, so a quoted ``"photos/*.jpg"`` works the same
on a shell that expands nothing (Windows' cmd, PowerShell) and past the shell's argument limit.
An argument that yields no file is kept as a failure of its own, in its place, rather than
stopping the command: the files the other arguments name are still answered.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from modelcycle.data.images import IMAGE_SUFFIXES

GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class NamedFile:
    """One file to read (``error`` None), or an argument that names none (``error`` says why)."""

    path: Path
    error: str | None = None


def expand_image_args(args: list[str | Path]) -> list[NamedFile]:
    """Every file ``args`` name, in order, each once: a file as given, a folder's image files
    (recursed, by image suffix, sorted, hidden files and folders skipped), a glob's matches
    (sorted; a folder among them walked like a folder given)."""
    out: list[NamedFile] = []
    seen: set[Path] = set()
    for arg in args:
        for named in _expand(str(arg)):
            if named.error is None and named.path in seen:
                continue
            seen.add(named.path)
            out.append(named)
    return out


def _expand(arg: str) -> list[NamedFile]:
    path = Path(arg)
    if path.is_dir():
        return _folder(path)
    if path.exists() or not GLOB_CHARACTERS & set(arg):  # a file whose name holds [ or * is itself
        return [NamedFile(path)] if path.exists() else [NamedFile(path, _missing(path))]
    matches = sorted(Path(m) for m in glob.glob(arg, recursive=True))  # hidden names only if spelled out
    if not matches:
        return [NamedFile(path, f"no file matches the pattern (relative paths start from {Path.cwd()})")]
    return [named for match in matches for named in (_folder(match) if match.is_dir() else [NamedFile(match)])]


def _folder(folder: Path) -> list[NamedFile]:
    files = []
    # links to folders are not followed: a link back up the tree would loop
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [
            Path(dirpath, name)
            for name in filenames
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
        ]
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        return [NamedFile(folder, f"folder holds no image files (looked for {suffixes}, hidden files skipped)")]
    return [NamedFile(f) for f in sorted(files)]


def _missing(path: Path) -> str:
    if path.is_symlink():
        return f"is a link to {os.readlink(path)}, which does not exist"
    return f"does not exist; check the path (relative paths start from {Path.cwd()})"
