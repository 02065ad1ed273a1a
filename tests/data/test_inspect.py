"""``inspect``: the class table and the picture of one augmented batch."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from modelcycle.config import DataSection
from modelcycle.data.inspect import batch_grid, class_table
from modelcycle.data.manifest import PreparedData
from modelcycle.data.prepare import prepare


def test_class_table(image_folder: Path, tmp_path: Path):
    prepare(image_folder, tmp_path / "data", val=0.25, test=0.25)
    rows = class_table(PreparedData.open(tmp_path / "data"))
    assert rows == [{"class": f"class_{i}", "train": 6, "val": 3, "test": 3} for i in range(3)]


def test_batch_grid_writes_a_png(prepared: Path, tmp_path: Path):
    out = tmp_path / "pictures" / "batch.png"
    path = batch_grid(PreparedData.open(prepared), DataSection(image_size=16), out, count=10, seed=0)
    assert path == out
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 100
    again = tmp_path / "again.png"
    batch_grid(PreparedData.open(prepared), DataSection(image_size=16), again, count=10, seed=0)
    assert again.read_bytes() == out.read_bytes()  # the same seed draws the same batch
