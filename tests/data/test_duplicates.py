"""``prepare`` finds files with identical bytes (copies, hard links, links, the same picture in two
class folders), keeps each group in one split or, with ``--dedupe``, one file of it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import modelcycle.data.duplicates as duplicates
import modelcycle.data.prepare as prepare_module
from helpers import assert_mentions, make_image_folder, run_cli
from modelcycle.data.duplicates import ImageFacts, near_groups
from modelcycle.data.manifest import PreparedData
from modelcycle.data.prepare import prepare, stratified_split
from modelcycle.errors import DataError
from modelcycle.evaluation.crossval import fold_indices


def _with_copies(root: Path) -> Path:
    """3 classes x 12 distinct images, plus: a copy under another name, a hard link, a link inside
    the folder, and a copy of a class_0 picture in class_2 (a label conflict)."""
    make_image_folder(root)
    shutil.copy(root / "class_0" / "000.png", root / "class_0" / "copy.png")
    os.link(root / "class_0" / "001.png", root / "class_0" / "hard.png")
    (root / "class_1" / "link.png").symlink_to(root / "class_1" / "002.png")
    shutil.copy(root / "class_0" / "003.png", root / "class_2" / "stray.png")
    return root


def _manifests(out: Path) -> dict[str, list[str]]:
    return {
        split: [line.split("\t")[0] for line in (out / f"{split}.txt").read_text().splitlines()]
        for split in ("train", "val", "test")
        if (out / f"{split}.txt").exists()
    }


def _splits_by_content(out: Path, image_root: Path) -> dict[str, set[str]]:
    """sha256 of each listed file -> the splits it is listed in."""
    where: dict[str, set[str]] = {}
    for split, paths in _manifests(out).items():
        for path in paths:
            where.setdefault(hashlib.sha256((image_root / path).read_bytes()).hexdigest(), set()).add(split)
    return where


def test_copies_links_and_a_cross_class_copy_are_reported(tmp_path: Path, capsys):
    src = _with_copies(tmp_path / "images")
    out = tmp_path / "data"
    result = prepare(src, out, val=0.25, seed=0)

    found = json.loads((out / "duplicates.json").read_text())
    assert found["summary"] == {
        "groups": 4,
        "files": 8,
        "links": 2,  # hard.png and link.png; copy.png and stray.png are files of their own
        "conflict_groups": 1,
        "conflict_files": 2,
        "policy": "together",
        "dropped": 0,
    }
    assert result.stats["duplicates"] == found["summary"]
    assert json.loads((out / "stats.json").read_text())["duplicates"] == found["summary"]
    conflict, *others = found["groups"]  # conflicts are listed first
    assert conflict["conflict"] and conflict["classes"] == ["class_0", "class_2"]
    assert [(f["path"], f["class"]) for f in conflict["files"]] == [
        ("class_0/003.png", "class_0"),
        ("class_2/stray.png", "class_2"),
    ]
    assert sorted(tuple(f["path"] for f in g["files"]) for g in others) == [
        ("class_0/000.png", "class_0/copy.png"),
        ("class_0/001.png", "class_0/hard.png"),
        ("class_1/002.png", "class_1/link.png"),
    ]
    assert conflict["sha256"] == hashlib.sha256((src / "class_2" / "stray.png").read_bytes()).hexdigest()
    for group in found["groups"]:  # each group's files share the split they were written to
        assert len({f["split"] for f in group["files"]}) == 1 and group["files"][0]["split"] in ("train", "val")
    assert result.stats["num_images"] == 40  # the default keeps every file
    err = capsys.readouterr().err
    assert_mentions(err, "4 group(s) of identical images, 8 files", "kept in one split", out / "duplicates.json")
    assert_mentions(err, "LABEL CONFLICTS", "class_0/003.png (class_0) = class_2/stray.png (class_2)", "--dedupe")


def test_a_folder_without_duplicates_reports_none(image_folder: Path, tmp_path: Path, capsys):
    result = prepare(image_folder, tmp_path / "data")
    found = json.loads((tmp_path / "data" / "duplicates.json").read_text())
    assert found["groups"] == [] and result.stats["duplicates"]["groups"] == 0
    assert "duplicates" not in capsys.readouterr().err


def test_groups_never_straddle_splits(tmp_path: Path):
    src = make_image_folder(tmp_path / "images", classes=2, per_class=10)
    for n in range(6):  # groups of 2 to 4 copies in each class, and one 6-file group
        for copy in range(n % 3 + 1):
            for label in (0, 1):
                shutil.copy(src / f"class_{label}" / f"{n:03d}.png", src / f"class_{label}" / f"{n:03d}-{copy}.png")
    for copy in range(5):
        os.link(src / "class_1" / "009.png", src / "class_1" / f"009-link{copy}.png")
    listed_splits = set()
    for seed in range(25):
        out = tmp_path / f"data-{seed}"
        prepare(src, out, val=0.3, test=0.2, seed=seed)
        where = _splits_by_content(out, src)
        assert all(len(splits) == 1 for splits in where.values()), where
        assert sum(map(len, _manifests(out).values())) == 20 + 2 * (1 + 2 + 3 + 1 + 2 + 3) + 5  # nothing lost
        listed_splits |= {split for splits in where.values() for split in splits}
    assert listed_splits == {"train", "val", "test"}  # groups do reach the held-out splits
    prepare(src, tmp_path / "again", val=0.3, test=0.2, seed=7)
    for name in ("train.txt", "val.txt", "test.txt", "duplicates.json"):  # the same seed, the same split
        assert (tmp_path / "again" / name).read_text() == (tmp_path / "data-7" / name).read_text()


def test_split_with_units_keeps_them_whole_and_a_training_image_per_class():
    # worst case: one class whose images are mostly one big group, shares too small to hold it
    labels = [0] * 12 + [1] * 3
    units = [0] * 9 + [9, 10, 11] + [12, 12, 12]  # class 1 is all one picture
    for seed in range(50):
        split = stratified_split(labels, {"val": 0.25, "test": 0.25}, seed, units)
        assert sorted(i for part in split.values() for i in part) == list(range(15))
        for name, part in split.items():
            assert (set(range(9)) & set(part)) in (set(), set(range(9))), (seed, name)
        assert set(range(9)) <= set(split["train"])  # 9 images don't fit a share of 3
        assert {12, 13, 14} <= set(split["train"])  # every class keeps a training image
        assert sorted(split["val"] + split["test"]) == [9, 10, 11]  # the only units that fit a share
    held_out = stratified_split([0] * 8, {"val": 0.5}, 0, [0, 0, 1, 1, 2, 2, 3, 3])["val"]
    assert len(held_out) == 4 and {i // 2 for i in held_out} == {held_out[0] // 2, held_out[2] // 2}


def test_dedupe_keeps_one_file_per_group_and_drops_label_conflicts(tmp_path: Path, capsys):
    src = _with_copies(tmp_path / "images")
    out = tmp_path / "data"
    result = prepare(src, out, val=0.25, seed=0, dedupe=True)
    listed = [path for paths in _manifests(out).values() for path in paths]
    assert len(listed) == len(set(listed)) == 36 - 1  # the conflicting picture is gone from both folders
    assert {"class_0/000.png", "class_0/001.png", "class_1/002.png"} <= set(listed)  # the first of each kept
    assert not {"class_0/copy.png", "class_0/hard.png", "class_1/link.png"} & set(listed)
    assert not {"class_0/003.png", "class_2/stray.png"} & set(listed)
    assert all(len(splits) == 1 for splits in _splits_by_content(out, src).values())
    assert len(_splits_by_content(out, src)) == 35  # no content twice
    found = json.loads((out / "duplicates.json").read_text())
    assert found["summary"]["policy"] == "dedupe" and found["summary"]["dropped"] == 5
    dropped = [f["path"] for g in found["groups"] for f in g["files"] if f["split"] is None]
    assert sorted(dropped) == [
        "class_0/003.png",
        "class_0/copy.png",
        "class_0/hard.png",
        "class_1/link.png",
        "class_2/stray.png",
    ]
    assert result.stats["num_images"] == 35
    assert sum(n for counts in result.counts.values() for n in counts.values()) == 35
    assert_mentions(capsys.readouterr().err, "dropped 5", "LABEL CONFLICTS", "--dedupe dropped every copy")


def test_dedupe_that_empties_a_class_says_so(image_folder: Path, tmp_path: Path):
    (image_folder / "class_3").mkdir()
    shutil.copy(image_folder / "class_0" / "000.png", image_folder / "class_3" / "only.png")
    prepare(image_folder, tmp_path / "kept")  # without --dedupe: kept, with the conflict warned about
    assert "class_3/only.png" in (tmp_path / "kept" / "train.txt").read_text()
    with pytest.raises(DataError, match="class_3 .* no readable images after --dedupe dropped the label conflicts"):
        prepare(image_folder, tmp_path / "data", dedupe=True)


def test_names_of_one_file_are_decoded_once(image_folder: Path, tmp_path: Path, monkeypatch):
    for n in range(4):
        os.link(image_folder / "class_1" / "000.png", image_folder / "class_1" / f"hard{n}.png")
    (image_folder / "class_2" / "link.png").symlink_to(image_folder / "class_2" / "000.png")
    probed = []
    real = prepare_module.probe_file
    monkeypatch.setattr(prepare_module, "probe_file", lambda path, near: probed.append(path) or real(path, near))
    result = prepare(image_folder, tmp_path / "data")  # 41 names, one process: the patch is seen
    assert len(probed) == 36 and result.stats["num_images"] == 41
    assert result.stats["duplicates"]["links"] == 5


def test_the_same_path_listed_twice_in_a_source_manifest(image_folder: Path, tmp_path: Path, capsys):
    listing = image_folder / "list.txt"
    rows = [f"class_{c}/{n:03d}.png\tclass_{c}" for c in range(3) for n in range(12)]
    listing.write_text("\n".join([*rows, "class_1/005.png\tclass_2"]) + "\n")  # listed again, other label
    prepare(listing, tmp_path / "data", val=0.25)
    found = json.loads((tmp_path / "data" / "duplicates.json").read_text())
    assert found["summary"]["conflict_groups"] == 1 and found["summary"]["links"] == 1
    assert len({f["split"] for f in found["groups"][0]["files"]}) == 1
    assert "LABEL CONFLICTS" in capsys.readouterr().err


def _picture(seed: int) -> Image.Image:
    """A smooth 64x64 picture: random 8x8 colours, upscaled; pictures of different seeds differ in
    about half their dHash bits."""
    cells = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(cells, "RGB").resize((64, 64), Image.Resampling.BICUBIC)


def test_near_duplicates_are_listed_only_with_the_flag(tmp_path: Path):
    src = tmp_path / "images"
    for label in range(2):
        (src / f"class_{label}").mkdir(parents=True)
        for n in range(8):
            _picture(10 * label + n).save(src / f"class_{label}" / f"{n}.png")
    _picture(3).save(src / "class_0" / "3-recompressed.jpg", quality=85)
    _picture(3).resize((48, 48)).save(src / "class_1" / "3-small.png")
    shutil.copy(src / "class_1" / "5.png", src / "class_1" / "5-copy.png")  # exact: not a near group of its own

    plain = prepare(src, tmp_path / "plain")
    assert "near_duplicates" not in json.loads((tmp_path / "plain" / "duplicates.json").read_text())
    assert "near_groups" not in plain.stats["duplicates"]
    result = prepare(src, tmp_path / "data", near_duplicates=True)
    found = json.loads((tmp_path / "data" / "duplicates.json").read_text())
    assert [[f["path"] for f in group["files"]] for group in found["groups"]] == [
        ["class_1/5-copy.png", "class_1/5.png"]
    ]
    assert [sorted(f["path"] for f in group) for group in found["near_duplicates"]] == [
        ["class_0/3-recompressed.jpg", "class_0/3.png", "class_1/3-small.png"]
    ]
    assert result.stats["duplicates"]["near_groups"] == 1
    assert result.counts == plain.counts  # reported only: the split is the one without the flag


def test_near_groups_are_not_chained():
    # b is 4 bits from a, c 4 bits from b but 8 from a: a chain must not put a and c together
    a, b, c, far = 0, 0b1111, 0b1111_1111, (1 << 64) - 1
    facts = [ImageFacts(8, 8, "L", f"sha-{n}", code) for n, code in enumerate([a, b, c, far, a])]
    assert near_groups(facts) == [[0, 1, 4]]  # c alone is no group; the copy of a (4) joins a's
    copies_only = [ImageFacts(8, 8, "L", "same", 0), ImageFacts(8, 8, "L", "same", 1)]
    assert near_groups(copies_only) == []  # identical bytes: the exact groups list them


def test_crossval_folds_keep_groups_together(tmp_path: Path):
    src = make_image_folder(tmp_path / "images", classes=2, per_class=12)
    for n in range(4):
        for copy in range(n + 1):
            shutil.copy(src / "class_0" / f"{n:03d}.png", src / "class_0" / f"{n:03d}-{copy}.png")
    prepare(src, tmp_path / "data", val=0.25)
    data = PreparedData.open(tmp_path / "data")
    items = data.split("train") + data.split("val")
    copies = data.copy_groups()
    assert len(copies) == 4 + 1 + 2 + 3 + 4
    labels = np.array([label for _, label in items])
    for seed in range(10):
        for train_idx, val_idx in fold_indices(items, labels, copies, 3, seed):
            trained = {copies[items[i][0]] for i in train_idx if items[i][0] in copies}
            scored = {copies[items[i][0]] for i in val_idx if items[i][0] in copies}
            assert not trained & scored


def test_cli_reports_and_dedupes(tmp_path: Path):
    src = _with_copies(tmp_path / "images")
    kept = run_cli("prepare", src, "--out", tmp_path / "kept", "--val", "0.25")
    assert kept.returncode == 0, kept.stderr
    assert_mentions(kept.stderr, "40 images", "4 duplicate groups (8 files, 1 label conflicts)", "LABEL CONFLICTS")
    deduped = run_cli("prepare", src, "--out", tmp_path / "deduped", "--dedupe", "--near-duplicates")
    assert deduped.returncode == 0, deduped.stderr
    assert_mentions(deduped.stderr, "35 images", "5 dropped")
    assert "near_duplicates" in json.loads((tmp_path / "deduped" / "duplicates.json").read_text())
    assert len(_splits_by_content(tmp_path / "deduped", src)) == 35


def test_large_files_are_hashed_in_chunks_and_decoded_from_disk(tmp_path: Path, monkeypatch):
    src = _with_copies(tmp_path / "images")
    (src / "class_1" / "truncated.png").write_bytes((src / "class_1" / "003.png").read_bytes()[:300])
    monkeypatch.setattr(duplicates, "CHUNK", 64)  # every file is read in several chunks ...
    monkeypatch.setattr(duplicates, "IN_MEMORY", 256)  # ... and most are too big to keep: decoded from disk
    result = prepare(src, tmp_path / "data")
    assert result.stats["duplicates"]["groups"] == 4 and result.stats["duplicates"]["conflict_groups"] == 1
    assert result.stats["num_images"] == 40
    assert [path for path, _ in result.rejected] == ["class_1/truncated.png"]
