"""Text data: JSONL validation with file, line and what to do; the pydoc-topics corpus; batches
padded to their longest text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import assert_mentions, run_cli
from modelcycle.data.pydoc_topics import GROUPS, write_pydoc_topics
from modelcycle.data.text import PadCollate, TextData, read_jsonl
from modelcycle.errors import DataError


def _write(path: Path, lines: list[str | dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return path


def _ok(text: str, label: str) -> dict:
    return {"text": text, "label": label}


def test_every_bad_line_is_named_with_its_file_and_line(tmp_path: Path):
    path = _write(
        tmp_path / "train.jsonl",
        [
            _ok("fine", "a"),
            '{"text": "no closing brace"',
            {"text": "no label"},
            {"text": "   ", "label": "a"},
            {"text": "numeric label", "label": 3},
            '["a", "list"]',
        ],
    )
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert_mentions(
        message,
        f"{path}: 5 bad lines",
        f"{path}:2: not valid JSON",
        f'{path}:3: no "label" key',
        f'{path}:4: "text" is empty',
        f'{path}:5: "label" is a int, not a string',
        f"{path}:6: a JSON list, not an object",
        "fix or delete these lines",
    )


def test_a_long_list_of_problems_is_cut_and_counted(tmp_path: Path):
    path = _write(tmp_path / "train.jsonl", ["not json"] * 9)
    with pytest.raises(DataError, match=r"9 bad lines(.|\n)*\.\.\. and 4 more"):
        read_jsonl(path)


def test_classes_come_from_train_sorted_and_blank_lines_are_skipped(tmp_path: Path):
    _write(tmp_path / "train.jsonl", [_ok("x", "zebra"), "", _ok("y", "ant"), "   ", _ok("z", "zebra")])
    _write(tmp_path / "val.jsonl", [_ok("w", "ant")])
    data = TextData.open(tmp_path)
    assert data.classes == ["ant", "zebra"]
    assert data.split("train") == [("x", 1), ("y", 0), ("z", 1)]
    assert data.split("val") == [("w", 0)] and not data.has_split("test")


def test_a_val_label_missing_from_train_names_the_line_and_the_fix(tmp_path: Path):
    _write(tmp_path / "train.jsonl", [_ok("x", "a"), _ok("y", "b")])
    _write(tmp_path / "val.jsonl", [_ok("x", "a"), _ok("y", "b"), _ok("z", "c")])
    with pytest.raises(DataError) as info:
        TextData.open(tmp_path)
    assert_mentions(str(info.value), f"{tmp_path / 'val.jsonl'}:3: label 'c'", "add some to train.jsonl")


def test_a_folder_without_train_jsonl_says_what_it_needs(tmp_path: Path):
    with pytest.raises(DataError) as info:
        TextData.open(tmp_path)
    assert_mentions(str(info.value), "has no train.jsonl", "modelcycle datasets pydoc-topics")


def test_one_class_is_not_a_classification(tmp_path: Path):
    _write(tmp_path / "train.jsonl", [_ok("x", "a"), _ok("y", "a")])
    with pytest.raises(DataError, match="every example has the label 'a'"):
        TextData.open(tmp_path)


def test_pydoc_topics_is_deterministic_stratified_and_has_every_group(tmp_path: Path):
    counts = write_pydoc_topics(tmp_path / "a")
    write_pydoc_topics(tmp_path / "b")
    write_pydoc_topics(tmp_path / "c", seed=1)
    for name in ("train.jsonl", "val.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "val.jsonl").read_bytes() != (tmp_path / "c" / "val.jsonl").read_bytes()

    data = TextData.open(tmp_path / "a")
    assert data.classes == sorted(GROUPS)
    for group in GROUPS:
        train, val = counts["train"][group], counts["val"][group]
        assert train >= 60 and val >= 15, (group, train, val)
        assert abs(val / (train + val) - 0.2) < 0.01  # stratified: each group split 80/20
    texts = [t for split in ("train", "val") for t, _ in data.split(split)]
    assert len(texts) == len(set(texts)) > 1000  # no paragraph twice, so none in both splits
    assert all(len(t.split()) >= 10 for t in texts)
    source = json.loads((tmp_path / "a" / "source.json").read_text())
    assert source["counts"] == counts and source["seed"] == 0


def test_datasets_verb_writes_pydoc_topics(tmp_path: Path):
    result = run_cli("datasets", "pydoc-topics", "--out", tmp_path / "topics")
    assert result.returncode == 0, result.stderr
    assert_mentions(result.stderr, f"wrote pydoc-topics to {tmp_path / 'topics'}")
    assert len(read_jsonl(tmp_path / "topics" / "val.jsonl")) > 200
    result = run_cli("datasets", "pydoc", "--out", tmp_path / "x")
    assert result.returncode == 2 and "available: digits, pydoc-topics" in result.stderr


def test_batches_pad_to_their_longest_text():
    collate = PadCollate(pad_id=0)
    inputs, labels = collate([([101, 7, 102], 1), ([101, 5, 6, 8, 102], 0)])
    assert inputs["input_ids"].tolist() == [[101, 7, 102, 0, 0], [101, 5, 6, 8, 102]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert labels.tolist() == [1, 0]
