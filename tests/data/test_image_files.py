"""What a command line's file arguments expand to: files, folders, globs, and the arguments that
name nothing, each kept as a failure in its place."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelcycle.data.image_files import NamedFile, expand_image_args


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """b.png, a.JPG, notes.txt, .hidden.png, sub/c.webp, sub/deeper/d.png, .cache/e.png"""
    for name in ("b.png", "a.JPG", "notes.txt", ".hidden.png", "sub/c.webp", "sub/deeper/d.png", ".cache/e.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def paths(named: list[NamedFile]) -> list[Path]:
    assert all(n.error is None for n in named), named
    return [n.path for n in named]


def test_a_folder_gives_its_image_files_recursed_sorted_without_hidden_ones(tree: Path):
    assert paths(expand_image_args([tree])) == [
        tree / "a.JPG",
        tree / "b.png",
        tree / "sub" / "c.webp",
        tree / "sub" / "deeper" / "d.png",
    ]


def test_a_file_named_is_taken_whatever_its_suffix(tree: Path):
    # the reader says what is wrong with it, as for any other file
    assert paths(expand_image_args([tree / "notes.txt", tree / ".hidden.png"])) == [
        tree / "notes.txt",
        tree / ".hidden.png",
    ]


def test_a_glob_is_expanded_sorted_and_a_folder_it_matches_is_walked(tree: Path):
    assert paths(expand_image_args([str(tree / "*.png")])) == [tree / "b.png"]  # .hidden.png: not spelled out
    assert paths(expand_image_args([str(tree / "s*")])) == [tree / "sub" / "c.webp", tree / "sub" / "deeper" / "d.png"]
    assert paths(expand_image_args([str(tree / "**" / "*.png")])) == [tree / "b.png", tree / "sub" / "deeper" / "d.png"]


def test_arguments_that_name_nothing_fail_in_their_place(tree: Path, tmp_path: Path):
    empty = tmp_path / "empty"
    (empty / ".thumbs").mkdir(parents=True)
    (empty / ".thumbs" / "x.png").write_bytes(b"x")
    named = expand_image_args([tree / "b.png", tmp_path / "missing.png", str(tree / "*.gif"), empty, tree / "a.JPG"])
    assert [n.path for n in named] == [tree / "b.png", tmp_path / "missing.png", tree / "*.gif", empty, tree / "a.JPG"]
    assert [n.error is None for n in named] == [True, False, False, False, True]
    assert "does not exist" in named[1].error and str(Path.cwd()) in named[1].error
    assert "no file matches the pattern" in named[2].error
    assert "holds no image files" in named[3].error and ".png" in named[3].error


def test_a_file_listed_twice_is_answered_once(tree: Path):
    assert paths(expand_image_args([tree / "b.png", tree, str(tree / "*.png")])) == [
        tree / "b.png",
        tree / "a.JPG",
        tree / "sub" / "c.webp",
        tree / "sub" / "deeper" / "d.png",
    ]


def test_a_file_whose_name_looks_like_a_glob_is_itself(tmp_path: Path):
    odd = tmp_path / "photo[1].png"
    odd.write_bytes(b"x")
    assert paths(expand_image_args([odd])) == [odd]


def test_a_dangling_link_says_where_it_points(tmp_path: Path):
    link = tmp_path / "gone.png"
    link.symlink_to(tmp_path / "deleted.png")
    [named] = expand_image_args([link])
    assert "deleted.png" in named.error and "does not exist" in named.error
