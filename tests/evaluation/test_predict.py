"""``predict`` on many files (API level): every good file answered, every bad one its own error,
the same answers whatever the batch size, and the same as `evaluate` feeds the model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

import modelcycle
from helpers import class_image, header_only_png
from modelcycle.errors import DataError
from modelcycle.evaluation.inference import predict_items
from modelcycle.export.runtime import load_predictor


def write_photos(folder: Path, count: int, seed: int = 7) -> list[Path]:
    """``count`` new pictures of the three classes, PNG and JPEG, in ``folder`` and a subfolder."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / ("nested" if i % 3 == 2 else "") / f"{i:03d}.{'jpg' if i % 2 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        class_image(i % 3, rng).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))
        paths.append(path)
    return sorted(paths)


@pytest.fixture
def mixed(tmp_path: Path) -> dict[str, Path | list[Path]]:
    """A folder of good pictures with four bad files among them."""
    folder = tmp_path / "photos"
    good = write_photos(folder, 9)
    buffer = io.BytesIO()
    class_image(0, np.random.default_rng(1), size=64).save(buffer, "JPEG", quality=90)
    bad = {
        "corrupt": folder / "corrupt.png",
        "truncated": folder / "nested" / "truncated.jpg",
        "huge": folder / "huge.png",
        "empty": folder / "empty.jpg",
    }
    bad["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture" * 4)
    bad["truncated"].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    bad["huge"].write_bytes(header_only_png(7_000, 7_000))  # 49 M pixels: over serve.max_pixels, square
    bad["empty"].write_bytes(b"")
    return {"folder": folder, "good": good, **bad}


def test_every_good_file_is_answered_and_every_bad_one_gets_its_own_error(trained: Path, mixed):
    rows = list(modelcycle.iter_predict(trained, [mixed["folder"]], topk=2))
    by_path = {row["path"]: row for row in rows}
    assert [row["path"] for row in rows] == sorted(by_path, key=lambda p: Path(p).parts)  # folder order: sorted
    assert len(rows) == len(mixed["good"]) + 4
    for path in mixed["good"]:
        row = by_path[str(path)]
        assert "error" not in row and row["label"] in ("class_0", "class_1", "class_2") and len(row["topk"]) == 2
    errors = {name: by_path[str(mixed[name])]["error"] for name in ("corrupt", "truncated", "huge", "empty")}
    assert set(by_path[str(mixed["corrupt"])]) == {"path", "error"}
    assert "not an image" in errors["corrupt"]
    assert "damaged image" in errors["truncated"] and "truncated" in errors["truncated"]
    assert "49,000,000 pixels, over the limit of 40,000,000" in errors["huge"]
    assert "empty file" in errors["empty"]


def test_batch_size_does_not_change_the_answers(trained: Path, mixed):
    one = list(modelcycle.iter_predict(trained, [mixed["folder"]], batch_size=1))
    many = list(modelcycle.iter_predict(trained, [mixed["folder"]], batch_size=32))
    three = list(modelcycle.iter_predict(trained, [mixed["folder"]], batch_size=3))
    assert [r["path"] for r in one] == [r["path"] for r in many] == [r["path"] for r in three]
    for a, b, c in zip(one, many, three, strict=True):
        assert a.get("error") == b.get("error") == c.get("error")
        assert a.get("label") == b.get("label") == c.get("label")
        if "error" not in a:
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
            assert c["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_the_model_sees_what_evaluate_feeds_it(trained: Path, tmp_path: Path):
    photos = write_photos(tmp_path / "photos", 7)
    expected = predict_items(load_predictor(trained), [(p, 0) for p in photos], workers=0)
    rows = modelcycle.predict(trained, photos, topk=3, batch_size=4)
    got = np.array([[t["probability"] for t in sorted(r["topk"], key=lambda t: t["label"])] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_globs_and_a_pattern_that_matches_nothing(trained: Path, tmp_path: Path):
    photos = write_photos(tmp_path / "photos", 6)
    rows = list(modelcycle.iter_predict(trained, [str(tmp_path / "photos" / "*.jpg"), str(tmp_path / "*.gif")]))
    jpgs = sorted(p for p in photos if p.suffix == ".jpg" and p.parent.name == "photos")
    assert [r["path"] for r in rows] == [*map(str, jpgs), str(tmp_path / "*.gif")]
    assert all("label" in r for r in rows[:-1]) and "no file matches" in rows[-1]["error"]


def test_predict_names_every_file_it_could_not_answer(trained: Path, mixed):
    with pytest.raises(DataError) as caught:
        modelcycle.predict(trained, [mixed["folder"]])
    message = str(caught.value)
    assert f"cannot predict 4 of {len(mixed['good']) + 4} files" in message
    for name in ("corrupt", "truncated", "huge", "empty"):
        assert str(mixed[name]) in message
    assert "iter_predict" in message


@pytest.mark.parametrize(("option", "value"), [("topk", 0), ("batch_size", 0)])
def test_impossible_settings_are_refused(trained: Path, tmp_path: Path, option: str, value: int):
    photos = write_photos(tmp_path / "photos", 1)
    with pytest.raises(DataError, match="at least 1"):
        modelcycle.predict(trained, photos, **{option: value})


def test_a_plugin_of_ones_own_predicts_as_before_and_refuses_a_batch_size(tmp_path: Path):
    from modelcycle.runs import PACKAGE_FORMAT

    def echo(run, inputs, topk=5, backend="auto"):
        return [{"input": str(i), "label": "echo", "probability": 1.0, "topk": []} for i in inputs]

    modelcycle.register_task(modelcycle.TaskPlugin(name="predict_echo_task", predict=echo))
    (tmp_path / "modelcycle.json").write_text(json.dumps({"format": PACKAGE_FORMAT, "task": "predict_echo_task"}))
    assert [r["input"] for r in modelcycle.predict(tmp_path, ["a", "b"])] == ["a", "b"]
    with pytest.raises(modelcycle.UserError, match="predict_echo_task: its predict takes no batch size"):
        modelcycle.predict(tmp_path, ["a"], batch_size=4)


def test_a_language_model_package_is_refused_by_name(sft_policy: Path):
    with pytest.raises(modelcycle.UserError, match="cannot be used with `modelcycle predict`"):
        modelcycle.predict(sft_policy, ["Hello"])
