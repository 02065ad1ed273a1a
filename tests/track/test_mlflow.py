"""MLflow tracking against a local sqlite store: a real tiny run, stopped by Ctrl-C and resumed,
lands in ONE MLflow run with its params, each metric step once, its files, the model package, a
PyTorch model that loads and takes any batch size, and a registry version; set-up problems fail
before any training."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

import modelcycle
from helpers import InterruptAt, read_jsonl, tiny_overrides
from modelcycle.engine.trainer import TrainingInterrupted
from modelcycle.errors import UserError
from modelcycle.packages import load_model

mlflow = pytest.importorskip("mlflow")  # the optional extra; installed with [dev]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")  # its own SQLAlchemy usage

MODEL_NAME = "tiny-classifier"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """One sqlite store for the module: creating its tables takes MLflow several seconds."""
    root = tmp_path_factory.mktemp("mlflow")
    return {"uri": f"sqlite:///{root / 'mlflow.db'}", "artifacts": root / "artifacts", "root": root}


def _config(data: Path, runs: Path, store: dict, *more: str):
    settings = [
        f"track.mlflow_uri={store['uri']}",
        "track.experiment=shapes",
        f"track.artifact_location={store['artifacts']}",
        "train.log_every=1",
    ]
    return modelcycle.load_config(None, [*tiny_overrides(data, runs, name="tracked"), *settings, *more])


@pytest.fixture(scope="module")
def tracked(store: dict, shapes_data: Path) -> dict:
    """Train with tracking, Ctrl-C after step 3, resume to the end with registration on; from an
    empty working folder, to see that nothing lands in MLflow's default store there."""
    runs, cwd = store["root"] / "runs", store["root"] / "cwd"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        with pytest.raises(TrainingInterrupted):
            modelcycle.train(_config(shapes_data, runs, store), progress=False, callbacks=[InterruptAt(3)])
        first = json.loads((runs / "tracked" / "mlflow.json").read_text())
        client = mlflow.MlflowClient(store["uri"])
        status_after_stop = client.get_run(first["run_id"]).info.status
        run = modelcycle.train(
            _config(shapes_data, runs, store, f"track.register={MODEL_NAME}"), resume=True, progress=False
        )
    record = json.loads((run.path / "mlflow.json").read_text())
    return {
        "run": run,
        "first": first,
        "record": record,
        "client": client,
        "status_after_stop": status_after_stop,
        "cwd": cwd,
    }


def test_a_resumed_run_continues_the_same_mlflow_run(tracked: dict):
    client, record = tracked["client"], tracked["record"]
    assert tracked["status_after_stop"] == "KILLED"
    assert record["run_id"] == tracked["first"]["run_id"]
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    assert len(client.search_runs([record["experiment_id"]])) == 1
    assert list(tracked["cwd"].iterdir()) == []  # no mlflow.db or mlruns/ from MLflow's process-wide defaults


def test_params_and_tags_are_the_resolved_config(tracked: dict):
    data = tracked["client"].get_run(tracked["record"]["run_id"]).data
    assert data.params["train.lr"] == "0.01" and data.params["model.args.width"] == "8"
    assert data.params["model.name"] == "simple_cnn" and data.params["train.epochs"] == "2"
    assert data.tags["modelcycle.run_dir"] == str(tracked["run"].path.resolve())
    assert data.tags["modelcycle.version"] == modelcycle.__version__
    assert data.tags["mlflow.runName"] == "tracked"


def test_every_metric_step_is_logged_once_with_the_values_of_metrics_jsonl(tracked: dict):
    client, run_id = tracked["client"], tracked["record"]["run_id"]
    rows = read_jsonl(tracked["run"].path / "metrics.jsonl")
    windows = [r for r in rows if "epoch_time_s" not in r]
    epochs = [r for r in rows if "epoch_time_s" in r]
    history = client.get_metric_history(run_id, "train_loss")
    assert [m.step for m in history] == [r["step"] for r in windows]  # the steps replayed after resume: once
    assert [m.value for m in history] == pytest.approx([r["train_loss"] for r in windows])
    accuracy = client.get_metric_history(run_id, "val_accuracy")
    assert [(m.step, m.value) for m in accuracy] == [(r["step"], pytest.approx(r["val_accuracy"])) for r in epochs]
    epoch = client.get_metric_history(run_id, "epoch")  # step -> epoch, for plotting against epochs in the UI
    assert [(m.step, m.value) for m in epoch] == [(r["step"], r["epoch"]) for r in windows]


def test_the_run_files_and_the_model_package_are_artifacts(tracked: dict, tmp_path: Path):
    client, run_id = tracked["client"], tracked["record"]["run_id"]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "metrics.jsonl", "events.log", "model"} <= top
    package = {a.path for a in client.list_artifacts(run_id, "model")}
    # every file of the package: weights, manifest and the monitor's reference profile
    assert package == {f"model/{f.name}" for f in tracked["run"].model_dir.iterdir()}
    assert {"model/model.safetensors", "model/modelcycle.json", "model/monitor_profile.json"} <= package
    local = Path(client.download_artifacts(run_id, "model", str(tmp_path)))
    assert (local / "model.safetensors").read_bytes() == (tracked["run"].model_dir / "model.safetensors").read_bytes()


def test_the_registered_pytorch_model_loads_and_takes_any_batch(tracked: dict, store: dict):
    version = tracked["record"]["registered_model"]
    assert version["name"] == MODEL_NAME
    registered = tracked["client"].get_model_version(MODEL_NAME, str(version["version"]))
    assert registered.run_id == tracked["record"]["run_id"] and registered.status == "READY"
    mlflow.set_tracking_uri(store["uri"])  # models:/NAME/VERSION is looked up in the registry of this URI
    try:
        loaded = mlflow.pytorch.load_model(f"models:/{MODEL_NAME}/{version['version']}")
    finally:
        mlflow.set_tracking_uri(None)
    ours, _ = load_model(tracked["run"].model_dir)
    images = torch.randn(3, 3, 16, 16)  # the example logged had 2: a frozen batch size would refuse 3
    with torch.no_grad():
        assert torch.allclose(loaded(images), ours(images), atol=1e-5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri", ["http://127.0.0.1:{port}", "sqllite:///{tmp}/mlflow.db"])  # no server; a typo
def test_an_unusable_store_fails_before_training(uri: str, store: dict, shapes_data: Path, tmp_path: Path):
    store = {**store, "uri": uri.format(port=_closed_port(), tmp=tmp_path)}
    with pytest.raises(UserError, match="track.mlflow_uri=.*cannot use this MLflow store"):
        modelcycle.train(_config(shapes_data, tmp_path / "runs", store), progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_run_tracked_from_its_resume_on_gets_its_earlier_metrics_too(store: dict, shapes_data: Path):
    runs = store["root"] / "late"
    untracked = modelcycle.load_config(None, [*tiny_overrides(shapes_data, runs, name="late"), "train.log_every=1"])
    with pytest.raises(TrainingInterrupted):
        modelcycle.train(untracked, progress=False, callbacks=[InterruptAt(3)])
    with pytest.raises(TrainingInterrupted):
        modelcycle.train(
            _config(shapes_data, runs, store, "run.name=late"), resume=True, progress=False, callbacks=[InterruptAt(6)]
        )
    run_id = json.loads((runs / "late" / "mlflow.json").read_text())["run_id"]
    history = mlflow.MlflowClient(store["uri"]).get_metric_history(run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]


class _Mean:
    """A task with no image in it: its package is no PyTorch image classifier MLflow could load."""

    metric_names = {"train": ("loss",), "val": ("loss",)}

    def training_step(self, model, batch):
        loss = (model(batch) ** 2).mean()
        return loss, {"loss": loss.detach() * len(batch), "count": torch.tensor(float(len(batch)))}

    def validation_step(self, model, batch):
        return {"loss": (model(batch) ** 2).sum(), "count": torch.tensor(float(len(batch)))}

    def summarize(self, sums):
        return {"loss": sums["loss"] / max(sums["count"], 1.0)}


def _mean_setup(config, ctx):
    from modelcycle import runs

    torch.manual_seed(0)
    rows = torch.randn(16, 3)
    loader = torch.utils.data.DataLoader(rows, batch_size=4)
    meta = {"task": "mlflow_mean", "backend": "torch"}
    return modelcycle.TaskParts(_Mean(), torch.nn.Linear(3, 1), loader, loader, meta, runs.write_package)


def test_a_run_of_a_task_without_a_pytorch_flavour_finishes_and_registers_its_package(store: dict, tmp_path: Path):
    """MLflow's finish() once loaded every package as an image classifier, so every run of another
    task (text, language models, a user's own) failed at its very end; the plugin now says whether
    a PyTorch model is logged, and the package folder is what gets registered otherwise."""
    modelcycle.register_task(
        modelcycle.TaskPlugin(name="mlflow_mean", setup=_mean_setup, defaults={"train": {"monitor": "val_loss"}}),
        replace=True,
    )
    config = modelcycle.load_config(
        None,
        [
            "run.task=mlflow_mean",
            f"run.dir={tmp_path / 'runs'}",
            "run.name=mean",
            "train.epochs=1",
            f"track.mlflow_uri={store['uri']}",
            f"track.artifact_location={store['artifacts']}",
            "track.experiment=mean",
            "track.register=mean-model",
        ],
    )
    run = modelcycle.train(config, progress=False)
    record = json.loads((run.path / "mlflow.json").read_text())
    assert record["model_uri"] == f"runs:/{record['run_id']}/model"
    client = mlflow.MlflowClient(store["uri"])
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    version = client.get_model_version("mean-model", str(record["registered_model"]["version"]))
    assert version.run_id == record["run_id"]
    assert "pytorch" not in {a.path for a in client.list_artifacts(record["run_id"])}
