"""Duplicate images in ``prepare``: the same bytes under several names.

A picture saved twice (a copy under another name, a hard link, a link inside the folder, the same
file in two class folders) that lands in train and in val makes the validation figure measure
memory, not generalisation. ``prepare`` hashes each file in the read that verifies it, groups equal
digests, and either keeps each group in one split (the default) or keeps one file of it
(``--dedupe``). Copies in different class folders are label conflicts: no split can make them
right, so they are reported loudly, and ``--dedupe`` drops every copy (which label is right is
unknown; keeping the first would keep whichever class folder sorts first).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from modelcycle.data.images import decoded_image, upright_size
from modelcycle.errors import DataError

CHUNK = 1 << 20
# Files up to this size are read once, hashed and decoded from memory; a larger one is hashed in
# chunks and decoded from disk (a second read, from the page cache), so a stray multi-gigabyte
# file is never held whole.
IN_MEMORY = 64 << 20
# dHash bits two pictures may differ in and still be listed as near-duplicates (of 64).
NEAR_BITS = 5


class ImageFacts(NamedTuple):
    """What verifying one file learnt about it."""

    width: int
    height: int
    mode: str
    sha256: str
    fingerprint: int | None = None  # dHash, only when near-duplicates are looked for
    file_id: tuple[int, int] | None = None  # (st_dev, st_ino): names of one file share it


def probe_file(path: Path, near: bool = False) -> ImageFacts:
    """Fully decode ``path`` (raises DataError with the reason) and hash its bytes in the same read."""
    data, digest = _read_hashed(path)
    with decoded_image(data if data is not None else path) as img:
        return ImageFacts(*upright_size(img), img.mode, digest, dhash(img) if near else None)


def _read_hashed(path: Path) -> tuple[bytes | None, str]:
    digest = hashlib.sha256()
    chunks: list[bytes] | None = []
    size = 0
    try:
        with open(path, "rb") as file:
            while block := file.read(CHUNK):
                digest.update(block)
                size += len(block)
                if chunks is not None and size <= IN_MEMORY:
                    chunks.append(block)
                else:
                    chunks = None
    except OSError as exc:
        raise DataError(f"cannot read the file: {exc.strerror or exc}") from None
    return (b"".join(chunks) if chunks is not None else None), digest.hexdigest()


def file_id(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file ``path`` names (links followed): hard links and links share it,
    so one of them is decoded and hashed for all. None where the file system gives no inode."""
    try:
        stat = os.stat(path)
    except OSError:
        return None  # the probe reports why
    return (stat.st_dev, stat.st_ino) if stat.st_ino else None


def dhash(img: Image.Image) -> int:
    """A 64-bit difference hash of the greyscale 9x8 thumbnail: re-encoded, resized or slightly
    edited copies of one picture differ in a few bits."""
    small = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    return int(np.packbits(small[:, 1:] > small[:, :-1]).view(">u8")[0])


@dataclass
class DuplicateGroup:
    members: list[int]  # indices of the verified files with these bytes, in scan order
    sha256: str
    labels: list[int]  # the members' labels, in the same order

    @property
    def conflict(self) -> bool:
        return len(set(self.labels)) > 1


def find_groups(facts: list[ImageFacts], labels: list[int]) -> list[DuplicateGroup]:
    by_digest: dict[str, list[int]] = {}
    for i, fact in enumerate(facts):
        by_digest.setdefault(fact.sha256, []).append(i)
    return [
        DuplicateGroup(members, digest, [labels[i] for i in members])
        for digest, members in by_digest.items()
        if len(members) > 1
    ]


def dropped_by_dedupe(groups: list[DuplicateGroup]) -> set[int]:
    """``--dedupe``: every copy but the first of a group, and all of a conflicting group."""
    return {i for group in groups for i in (group.members if group.conflict else group.members[1:])}


def split_units(count: int, groups: list[DuplicateGroup]) -> list[int]:
    """Per file, the unit the split moves it with: its group's first member, or itself."""
    units = list(range(count))
    for group in groups:
        for i in group.members:
            units[i] = group.members[0]
    return units


def near_groups(facts: list[ImageFacts], max_bits: int = NEAR_BITS) -> list[list[int]]:
    """Groups of pictures whose fingerprints differ from the group's first one (in path order)
    in at most ``max_bits`` bits. Not joined transitively: a chain of small steps links pictures
    that look nothing alike (on the digits it joined 1,623 of 1,800 into one group). A group of
    one file's copies only is left to the exact groups. One row of numpy per group: about a
    second per 20,000 images, quadratic beyond."""
    fingerprints = np.array([fact.fingerprint for fact in facts], dtype=np.uint64)
    codes, first, code_of = np.unique(fingerprints, return_index=True, return_inverse=True)
    leader = np.full(len(codes), -1)
    for i in np.argsort(first).tolist():  # in path order: a group's first file leads it
        if leader[i] < 0:
            leader[(leader < 0) & (np.bitwise_count(codes ^ codes[i]) <= max_bits)] = i
    clusters: dict[int, list[int]] = {}
    for i, code in enumerate(code_of.tolist()):
        clusters.setdefault(int(leader[code]), []).append(i)
    return [members for members in clusters.values() if len({facts[i].sha256 for i in members}) > 1]


def report(
    groups: list[DuplicateGroup],
    facts: list[ImageFacts],
    files: list[tuple[str, str]],
    split_of: dict[int, str],
    dedupe: bool,
    near: list[list[int]] | None,
) -> dict:
    """duplicates.json: a summary (also in stats.json) and every group, conflicts first, with each
    file's path as the manifests write it, class and split (null for a file ``--dedupe`` dropped)."""

    def entry(i: int) -> dict:
        return {"path": files[i][0], "class": files[i][1], "split": split_of.get(i)}

    conflicts = [group for group in groups if group.conflict]
    in_groups = [i for group in groups for i in group.members]
    summary = {
        "groups": len(groups),
        "files": len(in_groups),
        # names beyond the first of one file on disk: hard links and links inside the folder
        "links": len(in_groups) - len({facts[i].file_id or i for i in in_groups}),
        "conflict_groups": len(conflicts),
        "conflict_files": sum(len(group.members) for group in conflicts),
        "policy": "dedupe" if dedupe else "together",
        "dropped": len(dropped_by_dedupe(groups)) if dedupe else 0,
    }
    listing = [
        {
            "sha256": group.sha256,
            "conflict": group.conflict,
            "classes": sorted({files[i][1] for i in group.members}),
            "files": [entry(i) for i in group.members],
        }
        for group in sorted(groups, key=lambda g: (not g.conflict, files[g.members[0]][0]))
    ]
    found: dict = {"summary": summary, "groups": listing}
    if near is not None:
        summary["near_groups"] = len(near)
        found["near_duplicates"] = [[entry(i) for i in group] for group in near]
    return found


def summary_line(summary: dict, listing: Path) -> str:
    """One line for the terminal: what was found and what was done with it."""
    parts = []
    if summary["groups"]:
        links = f", {summary['links']} of them hard links or links" if summary["links"] else ""
        done = (
            f"kept one file of each, dropped {summary['dropped']}"
            if summary["policy"] == "dedupe"
            else "each group kept in one split (--dedupe keeps one file of each)"
        )
        parts.append(f"{summary['groups']} group(s) of identical images, {summary['files']} files{links}; {done}")
    if summary.get("near_groups"):
        parts.append(f"{summary['near_groups']} group(s) of near-duplicates (reported only)")
    return f"duplicates: {'; '.join(parts)}; listed in {listing}"


def conflict_warning(groups: list[DuplicateGroup], files: list[tuple[str, str]], dedupe: bool, listing: Path) -> str:
    conflicts = [group for group in groups if group.conflict]
    first = " = ".join(f"{files[i][0]} ({files[i][1]})" for i in conflicts[0].members)
    action = (
        "--dedupe dropped every copy of them"
        if dedupe
        else "they are kept together in one split, each copy with its folder's label; fix the labels, or pass "
        "--dedupe to drop them"
    )
    return (
        f"LABEL CONFLICTS: {len(conflicts)} image(s) sit in more than one class folder with identical bytes "
        f"({sum(len(g.members) for g in conflicts)} files; first: {first}); {action}. See {listing}"
    )
