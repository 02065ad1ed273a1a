"""Prepared-folder manifests: every problem names the file and line and says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelcycle.data.manifest import PreparedData, read_classes, read_manifest
from modelcycle.errors import DataError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_reads_items_and_skips_comments(root: Path):
    manifest = root / "train.txt"
    manifest.write_text(f"# a comment\na.png\t0\n\nb.png\t1\n{root / 'a.png'}\t1\n")
    assert read_manifest(manifest, root, 2) == [(root / "a.png", 0), (root / "b.png", 1), (root / "a.png", 1)]


@pytest.mark.parametrize(
    "line,expected",
    [
        ("a.png\t2", r"class index 2 is out of range 0\.\.1 .*run `modelcycle prepare` again"),
        ("a.png\t-1", r"class index -1 is out of range"),
        ("a.png\tcat", r"class index 'cat' is not a whole number"),
        ("a.png 0", r"expected 'relative/path<TAB>class_index'"),
        ("gone.png\t0", r"image .*gone.png does not exist; fix the path"),
    ],
)
def test_bad_lines_name_file_and_line(root: Path, line: str, expected: str):
    manifest = root / "val.txt"
    manifest.write_text(f"a.png\t0\nb.png\t1\n{line}\n")
    with pytest.raises(DataError, match=rf"{manifest}:3: {expected}"):
        read_manifest(manifest, root, 2)


def test_classes_file_problems(tmp_path: Path):
    with pytest.raises(DataError, match="classes.txt not found"):
        read_classes(tmp_path / "classes.txt")
    (tmp_path / "classes.txt").write_text("\n\n")
    with pytest.raises(DataError, match="is empty"):
        read_classes(tmp_path / "classes.txt")


def test_prepared_data_errors(tmp_path: Path):
    with pytest.raises(DataError, match="modelcycle prepare"):
        PreparedData.open(tmp_path / "missing")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    data = PreparedData.open(tmp_path)
    assert data.classes == ["a", "b"] and data.channels == 3 and data.image_root == tmp_path
    with pytest.raises(DataError, match="--test 0.2"):
        data.split("test")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        data.split("dev")
