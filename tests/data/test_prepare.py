"""``prepare``: verify every image, reject bad files with reasons, write a reproducible split."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from helpers import assert_mentions, make_image_folder
from modelcycle.data.manifest import PreparedData
from modelcycle.data.prepare import prepare, stratified_split
from modelcycle.errors import DataError


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_writes_split_classes_and_stats(image_folder: Path, tmp_path: Path):
    out = tmp_path / "data"
    result = prepare(image_folder, out, val=0.25, test=0.25, seed=0)
    assert result.classes == ["class_0", "class_1", "class_2"]
    assert _lines(out / "classes.txt") == result.classes
    train, val, test = (_lines(out / f"{s}.txt") for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (18, 9, 9)  # 12 per class: 6/3/3, stratified
    assert result.counts == {
        "train": dict.fromkeys(result.classes, 6),
        "val": dict.fromkeys(result.classes, 3),
        "test": dict.fromkeys(result.classes, 3),
    }
    everything = [line.split("\t")[0] for line in train + val + test]
    assert len(set(everything)) == 36  # no image in two splits
    for line in train:  # relative path <TAB> class index, and the path's folder is that class
        rel, index = line.split("\t")
        assert rel.startswith(f"class_{index}/")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["num_images"] == 36 and stats["num_rejected"] == 0
    assert stats["channels"] == 3 and stats["width"]["median"] == 16
    assert Path(stats["image_root"]) == image_folder.resolve()
    assert (out / "rejected.txt").read_text() == ""
    data = PreparedData.open(out)
    items = data.split("train")
    assert len(items) == 18 and all(path.is_file() for path, _ in items)


def test_same_seed_same_split_other_seed_differs(image_folder: Path, tmp_path: Path):
    prepare(image_folder, tmp_path / "a", val=0.25, seed=3)
    prepare(image_folder, tmp_path / "b", val=0.25, seed=3)
    prepare(image_folder, tmp_path / "c", val=0.25, seed=4)
    a, b, c = ((tmp_path / n / "val.txt").read_text() for n in "abc")
    assert a == b
    assert a != c


def test_greyscale_folder_gives_one_channel(tmp_path: Path):
    src = make_image_folder(tmp_path / "grey", mode="L")
    result = prepare(src, tmp_path / "data")
    assert result.stats["channels"] == 1
    mixed = make_image_folder(tmp_path / "mixed", mode="L")
    Image.new("RGB", (16, 16), (200, 10, 10)).save(mixed / "class_0" / "colour.png")
    assert prepare(mixed, tmp_path / "data2").stats["channels"] == 3


def test_stale_test_split_is_removed(image_folder: Path, tmp_path: Path):
    out = tmp_path / "data"
    prepare(image_folder, out, val=0.2, test=0.2)
    assert (out / "test.txt").exists()
    prepare(image_folder, out, val=0.2)
    assert not (out / "test.txt").exists()


def test_bad_files_are_rejected_with_reasons(image_folder: Path, tmp_path: Path, capsys):
    good = image_folder / "class_0" / "000.png"
    jpeg = image_folder / "class_1" / "photo.jpg"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(jpeg, quality=90)
    data = jpeg.read_bytes()
    (image_folder / "class_1" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (image_folder / "class_1" / "empty.png").write_bytes(b"")
    (image_folder / "class_2" / "notes.txt").write_text("not a picture")
    (image_folder / "class_2" / "fake.jpg").write_text("plain text with an image suffix")
    outside = tmp_path / "outside.png"
    Image.open(good).save(outside)
    (image_folder / "class_2" / "link.png").symlink_to(outside)
    (image_folder / "class_0" / "inside_link.png").symlink_to(good)  # stays inside: accepted

    out = tmp_path / "data"
    result = prepare(image_folder, out)
    rejected = dict(line.split("\t") for line in _lines(out / "rejected.txt"))
    assert set(rejected) == {
        "class_1/truncated.jpg",
        "class_1/empty.png",
        "class_2/notes.txt",
        "class_2/fake.jpg",
        "class_2/link.png",
    }
    assert "damaged" in rejected["class_1/truncated.jpg"] and "truncated" in rejected["class_1/truncated.jpg"].lower()
    assert "empty" in rejected["class_1/empty.png"] and "0 bytes" in rejected["class_1/empty.png"]
    assert "not an image" in rejected["class_2/notes.txt"] and ".txt" in rejected["class_2/notes.txt"]
    assert "not an image" in rejected["class_2/fake.jpg"]
    assert "outside" in rejected["class_2/link.png"] and "refused" in rejected["class_2/link.png"]
    assert len(result.rejected) == 5 and result.stats["num_rejected"] == 5
    listed = {line.split("\t")[0] for s in ("train", "val") for line in _lines(out / f"{s}.txt")}
    assert not listed & set(rejected)
    assert "class_0/inside_link.png" in listed
    assert result.stats["num_images"] == 36 + 2  # the 12 x 3 + photo.jpg + inside_link.png
    err = capsys.readouterr().err
    assert "warning" in err
    assert_mentions(err, "5 file(s) rejected", out / "rejected.txt")


def test_missing_source(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist") as info:
        prepare(tmp_path / "nowhere", tmp_path / "data")
    assert str(tmp_path / "nowhere") in str(info.value)
    assert not (tmp_path / "data").exists()


def test_empty_source(tmp_path: Path):
    (tmp_path / "src").mkdir()
    with pytest.raises(DataError, match="is empty; put one folder of images per class"):
        prepare(tmp_path / "src", tmp_path / "data")


def test_files_but_no_class_folders(tmp_path: Path):
    make_image_folder(tmp_path / "x", classes=1)
    src = tmp_path / "x" / "class_0"  # images directly inside: no class folders
    with pytest.raises(DataError, match="no class folders"):
        prepare(src, tmp_path / "data")


def test_class_folder_without_readable_images(image_folder: Path, tmp_path: Path):
    (image_folder / "class_empty").mkdir()
    (image_folder / "class_broken").mkdir()
    (image_folder / "class_broken" / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError) as info:
        prepare(image_folder, tmp_path / "data")
    message = str(info.value)
    assert "class_empty" in message and "class_broken" in message
    assert "add images or remove the folder" in message
    assert "class_broken/a.jpg" in message  # the reason for the broken one is shown


@pytest.mark.parametrize("val,test", [(1.0, 0.0), (-0.1, 0.0), (0.6, 0.5)])
def test_bad_fractions(image_folder: Path, tmp_path: Path, val: float, test: float):
    with pytest.raises(DataError, match="fractions"):
        prepare(image_folder, tmp_path / "data", val=val, test=test)


def test_source_manifest(image_folder: Path, tmp_path: Path):
    listing = image_folder / "list.txt"
    listing.write_text(
        "".join(f"class_{c}/{n:03d}.png\t{name}\n" for c, name in enumerate(["cat", "dog", "owl"]) for n in range(12))
    )
    result = prepare(listing, tmp_path / "data", val=0.25)
    assert result.classes == ["cat", "dog", "owl"]
    assert result.counts["val"] == {"cat": 3, "dog": 3, "owl": 3}
    bad = image_folder / "bad.txt"
    bad.write_text("class_0/000.png\tcat\nclass_0/missing.png\tcat\n")
    with pytest.raises(DataError, match=rf"{bad}:2: image .*missing.png does not exist"):
        prepare(bad, tmp_path / "data2")


def test_stratified_split_keeps_a_training_image_per_class():
    labels = [0] * 10 + [1] * 2 + [2]
    split = stratified_split(labels, {"val": 0.5}, seed=0)
    assert sorted(split["train"] + split["val"]) == list(range(len(labels)))
    train_labels = {labels[i] for i in split["train"]}
    assert train_labels == {0, 1, 2}
    assert sum(labels[i] == 0 for i in split["val"]) == 5


def test_manifest_paths_survive_a_move_of_the_prepared_folder(image_folder: Path, tmp_path: Path):
    out = tmp_path / "data"
    prepare(image_folder, out)
    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    os.replace(out, moved)
    assert len(PreparedData.open(moved).split("train")) == 30


def test_symlinked_folder_pointing_outside_is_listed_as_refused(image_folder: Path, tmp_path: Path):
    # a link to a folder outside SRC inside a class folder: its files must not vanish unreported
    outside = make_image_folder(tmp_path / "outside", classes=1, per_class=3)
    (image_folder / "class_1" / "more").symlink_to(outside / "class_0", target_is_directory=True)
    result = prepare(image_folder, tmp_path / "data")
    assert result.stats["num_images"] == 36
    rejected = (tmp_path / "data" / "rejected.txt").read_text()
    assert "class_1/more" in rejected and "outside" in rejected


def test_symlinked_class_folder_pointing_outside_is_refused_not_fatal(image_folder: Path, tmp_path: Path):
    outside = make_image_folder(tmp_path / "outside", classes=1, per_class=3)
    (image_folder / "class_3").symlink_to(outside / "class_0", target_is_directory=True)
    result = prepare(image_folder, tmp_path / "data")
    assert result.classes == ["class_0", "class_1", "class_2"]
    rejected = (tmp_path / "data" / "rejected.txt").read_text()
    assert "class_3" in rejected and "refused" in rejected
