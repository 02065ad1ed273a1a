"""TensorBoard logging, read back with TensorBoard's own reader: a real tiny run that crashes
after logging past its last checkpoint and is resumed leaves one event folder with every step
once, the train and validation curves, a training batch's images, the confusion matrix and the
config as hyperparameters beside the final metrics. track.tensorboard=true without the package is
a clear error; false writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

import modelcycle
from helpers import tiny_overrides
from modelcycle.engine.callbacks import Callback
from modelcycle.errors import UserError
from modelcycle.track import tensorboard

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402
from tensorboard.compat.proto.event_pb2 import SessionLog  # noqa: E402


class CrashAt(Callback):
    """A bug after step ``step - 1`` was logged, past the last checkpoint (the end of epoch 1)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer) -> None:
        if trainer.state.step == self.step:
            raise RuntimeError("power cut")


def _config(data: Path, runs: Path, *more: str):
    settings = ["train.log_every=1", "train.epochs=3", *more]
    return modelcycle.load_config(None, [*tiny_overrides(data, runs, name="tb"), *settings])


def _read(run: Path):
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    return acc.Reload()


@pytest.fixture(scope="module")
def logged(shapes_data: Path, tmp_path_factory) -> dict:
    """30 training images in batches of 8: 4 steps an epoch, 12 in all. The first attempt logs
    steps 1-6 and dies; its last checkpoint is step 4 (epoch 1's end), so the resumed attempt logs
    5-12 again."""
    runs = tmp_path_factory.mktemp("tb") / "runs"
    with pytest.raises(RuntimeError, match="power cut"):
        modelcycle.train(_config(shapes_data, runs), progress=False, callbacks=[CrashAt(7)])
    first = _read(runs / "tb")
    run = modelcycle.train(_config(shapes_data, runs), progress=False, resume=True)
    return {"first": first, "acc": _read(run.path), "run": run}


def test_a_resumed_run_logs_every_step_once(logged: dict):
    assert [e.step for e in logged["first"].Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    acc = logged["acc"]
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 13))  # 5 and 6 not twice
    assert [e.step for e in acc.Scalars("val/accuracy")] == [4, 8, 12]  # each epoch's, by step
    files = sorted((logged["run"].path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 2  # one folder, a file per attempt
    # the resumed file tells any reader to drop the first file's steps from 5 on (purge_step)
    starts = [e.step for e in EventFileLoader(str(files[1])).Load() if e.session_log.status == SessionLog.START]
    assert starts == [5]


def test_scalars_match_metrics_jsonl(logged: dict):
    acc, run = logged["acc"], logged["run"]
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "train/lr", "train/samples_per_s"} <= tags
    assert {"val/loss", "val/accuracy", "val/top5", "epoch/train_loss", "epoch/epoch_time_s"} <= tags
    windows = [m for m in run.metrics if "val_loss" not in m]
    logged_loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert all(logged_loss[m["step"]] == pytest.approx(m["train_loss"], rel=1e-6) for m in windows)
    epochs = run.epoch_metrics()
    assert [e.value for e in acc.Scalars("val/accuracy")] == pytest.approx([m["val_accuracy"] for m in epochs])


def test_pictures_of_a_batch_and_the_confusion_matrix(logged: dict):
    acc = logged["acc"]
    assert set(acc.Tags()["images"]) >= {"train/batch", "val/confusion_matrix"}
    batch = acc.Images("train/batch")
    assert batch[0].step == 0 and batch[0].encoded_image_string.startswith(b"\x89PNG")
    assert [e.step for e in acc.Images("val/confusion_matrix")] == [4, 8, 12]


def test_the_config_is_logged_as_hyperparameters_with_the_final_metrics(logged: dict):
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = logged["acc"]
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {"train.lr", "model.name", "train.epochs"} <= {h.name for h in experiment.hparam_infos}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.name"].string_value == "simple_cnn"
    assert start.hparams["train.epochs"].number_value == 3
    final = logged["run"].epoch_metrics()[-1]
    assert acc.Scalars("hparams/val_accuracy")[-1].value == pytest.approx(final["val_accuracy"])
    assert "hparams/lr" not in acc.Tags()["scalars"]  # a setting, not a result


def test_tensorboard_true_without_the_package_names_the_extra(shapes_data, tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard, "available", lambda: False)
    with pytest.raises(UserError, match=r"track.tensorboard=true .*pip install 'modelcycle\[tensorboard\]'"):
        modelcycle.train(_config(shapes_data, tmp_path, "track.tensorboard=true"), progress=False)
    assert not (tmp_path / "tb").exists()  # refused before any work
    # left unset, a missing package is no error: the run trains without event files
    run = modelcycle.train(_config(shapes_data, tmp_path, "train.epochs=1"), progress=False)
    assert not (run.path / "tensorboard").exists()


def test_tensorboard_false_writes_no_event_files(shapes_data, tmp_path):
    run = modelcycle.train(_config(shapes_data, tmp_path, "track.tensorboard=false", "train.epochs=1"), progress=False)
    assert (run.path / "model").is_dir() and not (run.path / "tensorboard").exists()
