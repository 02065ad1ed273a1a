"""Issue 14, item 7: damaged run files. Non-UTF-8 bytes in modelcycle.json, config.yaml or
metrics.jsonl, and a model.safetensors that is not safetensors although it matches its sha256,
used to end in tracebacks; each is now an error (exit 2 on the command line) that names the file,
what is wrong and what to do. And a metrics.jsonl truncated before ``--resume`` no longer gives
the package another epoch's metrics: the resume puts back what the checkpoint finished."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import modelcycle
from helpers import assert_user_error, read_jsonl, run_cli
from modelcycle.engine import checkpoint
from modelcycle.errors import CheckpointError
from modelcycle.runfiles import DamagedFile
from modelcycle.runs import Run, read_manifest

NOT_UTF8 = b"\xff\xfe\xc3\x28 not text \x80\n"


@pytest.fixture
def finished(tiny_config) -> Run:
    return modelcycle.train(tiny_config(), progress=False)


def _damage(path: Path, line: int = 2) -> None:
    """Replace ``path``'s line ``line`` (1-based) with bytes that are not UTF-8."""
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line - 1] = NOT_UTF8
    path.write_bytes(b"".join(lines))


def _image(image_folder: Path) -> Path:
    return next(image_folder.rglob("*.png"))


def test_a_manifest_that_is_not_utf8_is_an_error(finished: Run, image_folder: Path):
    _damage(finished.model_dir / "modelcycle.json", line=3)
    result = run_cli("predict", finished.path, _image(image_folder))
    assert_user_error(result, "modelcycle.json", "is damaged", "not UTF-8", "line 3")
    with pytest.raises(DamagedFile, match="modelcycle.json is damaged"):
        modelcycle.evaluate(finished)


def test_a_run_config_that_is_not_utf8_is_an_error(finished: Run, tiny_config):
    _damage(finished.path / "config.yaml", line=4)
    with pytest.raises(DamagedFile, match=r"config.yaml is damaged: line 4 .* not UTF-8"):
        finished.config  # noqa: B018
    with pytest.raises(DamagedFile, match="config.yaml is damaged"):
        modelcycle.train(tiny_config(train__epochs=3), resume=True, progress=False)


def test_metrics_that_are_not_utf8_are_an_error_to_readers_and_mended_by_resume(finished: Run, tiny_config):
    path = finished.path / "metrics.jsonl"
    before = read_jsonl(path)
    _damage(path, line=2)
    with pytest.raises(DamagedFile, match=r"metrics.jsonl is damaged: line 2 is not UTF-8"):
        finished.metrics  # noqa: B018
    with pytest.raises(DamagedFile, match="metrics.jsonl is damaged"):
        modelcycle.evaluate(finished)  # the report draws the curves from it
    modelcycle.train(tiny_config(train__epochs=3), resume=True, progress=False)
    epochs = {m["epoch"]: m for m in finished.epoch_metrics()}
    assert sorted(epochs) == [1, 2, 3]
    assert [m for m in before if "epoch_time_s" in m] == [epochs[1], epochs[2]]
    assert "damaged line(s) dropped" in (finished.path / "events.log").read_text()


def test_weights_that_are_not_safetensors_but_match_their_sha256_are_an_error(finished: Run, image_folder: Path):
    package = finished.model_dir
    weights = package / "model.safetensors"
    weights.write_bytes(b"PK\x03\x04 this is a zip file, not safetensors" * 8)
    manifest = json.loads((package / "modelcycle.json").read_text())
    manifest["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (package / "modelcycle.json").write_text(json.dumps(manifest))
    result = run_cli("predict", package, _image(image_folder))
    assert_user_error(result, "model.safetensors is not a safetensors file", "matches the sha256")
    with pytest.raises(DamagedFile, match="not a safetensors file"):
        modelcycle.evaluate(package)


def test_metrics_truncated_before_resume_are_put_back_so_the_package_is_right(tiny_config):
    run = modelcycle.train(tiny_config(train__epochs=3), progress=False)
    path = run.path / "metrics.jsonl"
    full = read_jsonl(path)
    epoch_one = next(i for i, m in enumerate(full) if m.get("epoch_time_s") and m["epoch"] == 1)
    path.write_text("".join(json.dumps(m) + "\n" for m in full[: epoch_one + 1]))  # epochs 2 and 3 lost
    modelcycle.train(tiny_config(train__epochs=5), resume=True, progress=False)
    epochs = {m["epoch"]: m for m in run.epoch_metrics()}
    assert sorted(epochs) == [1, 2, 3, 4, 5]
    assert [epochs[e] for e in (1, 2, 3)] == [m for m in full if "epoch_time_s" in m]
    state = checkpoint.load(run.checkpoints / "last.pt")["state"]
    manifest = read_manifest(run)
    assert manifest["metrics"] == {k: v for k, v in epochs[state["best_epoch"]].items() if isinstance(v, int | float)}
    assert "put back from last.pt" in (run.path / "events.log").read_text()


def test_truncated_metrics_with_a_checkpoint_that_has_no_copy_refuse_to_resume(tiny_config):
    """A checkpoint written before checkpoints kept their epochs' metrics: no guessing."""
    run = modelcycle.train(tiny_config(train__epochs=2), progress=False)
    last = run.checkpoints / "last.pt"
    ck = checkpoint.load(last)
    del ck["state"]["history"]
    checkpoint.atomic_save(ck, last)
    path = run.path / "metrics.jsonl"
    lines = read_jsonl(path)
    path.write_text("".join(json.dumps(m) + "\n" for m in lines if m["epoch"] == 1))
    shutil.rmtree(run.model_dir)
    with pytest.raises(CheckpointError, match=r"lacks the metrics of epoch\(s\) 2.*--overwrite"):
        modelcycle.train(tiny_config(train__epochs=3), resume=True, progress=False)
    assert not run.model_dir.exists(), "no package with the wrong metrics"
