"""Optional MLflow tracking and model registry (``pip install 'modelcycle[mlflow]'``).

The run folder stays the record; MLflow gets a copy as training goes (params, metric histories,
tags) and at the end (files, the model package, a PyTorch model it can load and serve, and a
registry version). MLflow is imported only when ``track.mlflow_uri`` is set: it is a large
optional dependency and slow to import.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest.mock import patch  # patch.dict: environment variables set for one block, then restored

from modelcycle._version import __version__
from modelcycle.config import flatten
from modelcycle.engine.callbacks import Tracker
from modelcycle.errors import UserError
from modelcycle.progress import info, warn
from modelcycle.runlogs import MetricsLog
from modelcycle.track.listing import show
from modelcycle.track.status import model_entry, model_label, outcome, write_json

if TYPE_CHECKING:
    from modelcycle.config import Config
    from modelcycle.engine.trainer import Trainer
    from modelcycle.runs import Run

RECORD = "mlflow.json"  # in the run folder: where its MLflow run is, so --resume continues that one
EXTRA = "pip install 'modelcycle[mlflow]'"
MAX_PARAM_LENGTH = 6000  # MLflow refuses longer parameter values
PARAMS_PER_CALL, METRICS_PER_CALL = 100, 1000  # MLflow's limits per log_batch


def import_mlflow() -> Any:
    try:
        import mlflow
    except ImportError as exc:
        raise UserError(
            f"track.mlflow_uri is set but MLflow cannot be imported ({exc}); {EXTRA}, or remove track.mlflow_uri"
        ) from None
    for name in ("mlflow", "alembic"):  # database migrations and registrations log at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars of its own under ours
    return mlflow


def connect(mlflow: Any, uri: str, registry: bool) -> Any:
    """A client for ``uri``, checked with one cheap request: a wrong URI or a server that is down
    must stop the run before training, not hours later when the model is logged."""
    from mlflow import MlflowClient

    hint = (
        "Check the URI (a local store is sqlite:///mlflow.db; a server http://HOST:5000 must be running), "
        "or remove track.mlflow_uri"
    )
    with patch.dict(os.environ, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10"):
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
        except Exception as exc:  # every store type fails its own way (SQLAlchemy, requests, MLflow)
            raise UserError(
                f"track.mlflow_uri={uri}: cannot use this MLflow store: {_first_line(exc)}. {hint}"
            ) from None
        if registry:
            try:
                client.search_registered_models(max_results=1)
            except Exception as exc:
                raise UserError(
                    f"track.register is set but {uri} has no usable model registry: {_first_line(exc)}. The registry "
                    "needs a database store (sqlite:///mlflow.db) or a tracking server; or remove track.register"
                ) from None
    return client


class MlflowTracker(Tracker):
    # the training service sets this from the task plugin's "mlflow_pytorch" capability: only a
    # package that loads as a PyTorch image classifier (N, C, H, W in) becomes an MLflow PyTorch model;
    # any other run logs its package folder as the model
    pytorch_model = False

    def __init__(self, config: Config, resume: bool):
        self.mlflow = import_mlflow()
        self.config, self.settings, self.resume = config, config.track, resume
        self.uri: str = config.track.mlflow_uri or ""
        self.client = connect(self.mlflow, self.uri, registry=bool(config.track.register))
        self.experiment_id = self._experiment()
        self.run_id: str | None = None
        self.logged: dict[str, int] = {}  # metric -> last step MLflow has, so a resumed run logs each step once
        self.lost: str | None = None  # why logging stopped mid-run (the run folder still has everything)

    # ------------------------------------------------------------------ during training

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.run_dir is None:
            return
        from mlflow.exceptions import MlflowException

        self.run_dir = trainer.run_dir
        try:
            self.run_id = self._continued() if self.resume else None
            if self.run_id is None:
                tags = {
                    "modelcycle.version": __version__,
                    "modelcycle.run_dir": str(self.run_dir.resolve()),
                    "modelcycle.model": model_label(model_entry(trainer.meta)) or str(self.config.model.name),
                    "modelcycle.task": str(trainer.meta.get("task", "")),
                }
                name = self.settings.run_name or self.config.run.name
                self.run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            else:
                self.client.update_run(self.run_id, status="RUNNING")
            self._log_params()
            self._sync(self.run_dir)
        except (MlflowException, OSError) as exc:
            raise UserError(f"could not start the MLflow run at {self.uri}: {_first_line(exc)}") from None
        self._write_record()
        info(f"MLflow: run {self.run_id} in experiment '{self.settings.experiment}' at {self.uri}")

    def on_log(self, trainer: Trainer, metrics: dict) -> None:
        self._log_metrics(metrics)

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        self._log_metrics(metrics)

    def on_fit_end(self, trainer: Trainer) -> None:
        state, _ = outcome()
        if self.run_id is None or state == "finished":
            return  # a finished fit is closed in finish(), once the model package exists
        with contextlib.suppress(Exception):  # the training error is the one to report, not ours
            self._log_files(self.run_dir)
            self.client.set_terminated(self.run_id, "KILLED" if state == "interrupted" else "FAILED")

    # ------------------------------------------------------------------ at the end

    def finish(self, run: Run) -> None:
        if self.run_id is None:
            return
        from mlflow.exceptions import MlflowException
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        try:
            self._sync(run.path)
            self._log_files(run.path)
            if run.report_dir.is_dir():
                self.client.log_artifacts(self.run_id, str(run.report_dir), "report")
            self.client.log_artifacts(self.run_id, str(run.model_dir), "model")
            with _use_tracking_uri(self.uri):  # log_model and a version's models:/ source read MLflow's global URI
                logged = self._log_pytorch(run) if self.pytorch_model else None
                record: dict[str, Any] = {"model_uri": logged.model_uri if logged else f"runs:/{self.run_id}/model"}
                if self.settings.register:
                    version = self._register(logged, record["model_uri"])
                    record["registered_model"] = {"name": self.settings.register, "version": version}
                    info(f"MLflow: registered model '{self.settings.register}' version {version}")
            self._write_record(**record)
            self.client.set_terminated(self.run_id, "FINISHED")
        except (MlflowException, OSError) as exc:
            raise UserError(
                f"training finished (model package in {run.model_dir}) but logging it to MLflow at {self.uri} "
                f"failed: {_first_line(exc)}. The run folder is complete; once the store works, the same train command "
                "with --resume logs it (a finished run is not trained again)"
            ) from None

    def _log_pytorch(self, run: Run) -> Any:
        """The package's model as an MLflow PyTorch model. torch.export (pt2: no pickle to load)
        keeps the batch dimension free only when the example has more than one row, so it has two."""
        import numpy as np
        import torch

        from modelcycle.packages import load_model

        model, manifest = load_model(run.model_dir)
        arch = manifest["architecture"]
        shape = (2, arch["in_channels"], arch["image_size"], arch["image_size"])
        example = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        with self.mlflow.start_run(run_id=self.run_id):
            return self.mlflow.pytorch.log_model(
                model,
                name="pytorch",  # beside model/ (the package) in the run's artifacts
                input_example=example,
                serialization_format="pt2",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],  # skips a slow inference subprocess
            )

    def _register(self, logged: Any, source: str) -> int:
        """A new version of ``track.register`` (created on first use) from the logged model."""
        from mlflow.exceptions import MlflowException

        name = self.settings.register
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        model_id = logged.model_id if logged is not None else None
        version = self.client.create_model_version(name, source=source, run_id=self.run_id, model_id=model_id).version
        self.client.set_tag(self.run_id, "modelcycle.registered", f"{name}/{version}")
        return int(version)

    # ------------------------------------------------------------------ helpers

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        name = self.settings.experiment
        found = self.client.get_experiment_by_name(name)
        if found is None:
            location = self.settings.artifact_location
            if location and "://" not in location:
                location = Path(location).expanduser().resolve().as_uri()  # not relative to wherever MLflow runs
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except MlflowException:  # another process created it first
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            raise UserError(
                f"track.experiment={name}: this MLflow experiment was deleted; restore it "
                f"(mlflow experiments restore --experiment-id {found.experiment_id}) or choose another name"
            )
        return found.experiment_id

    def _continued(self) -> str | None:
        """The MLflow run this run folder logged to before, if it can go on in it."""
        try:
            record = json.loads((self.run_dir / RECORD).read_text())
        except (OSError, ValueError):
            return None
        if record.get("tracking_uri") != self.uri:
            warn(
                f"this run was tracked at {record.get('tracking_uri')}; its resumed part starts a new run at {self.uri}"
            )
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(record["run_id"])
        except MlflowException:
            warn(f"MLflow run {record.get('run_id')} is gone from {self.uri}; the resumed part starts a new run")
            return None
        if run.info.lifecycle_stage == "deleted":
            return None
        for key in run.data.metrics:
            self.logged[key] = max(m.step for m in self.client.get_metric_history(run.info.run_id, key))
        return run.info.run_id

    def _log_params(self) -> None:
        from mlflow.entities import Param

        flat = {
            k: show(v)[:MAX_PARAM_LENGTH] for k, v in flatten(self.config.model_dump(mode="json"), whole=()).items()
        }
        before = self.client.get_run(self.run_id).data.params
        changed = [f"{k}: {before[k]} -> {v}" for k, v in flat.items() if k in before and before[k] != v]
        params = [Param(k, v) for k, v in flat.items() if k not in before]  # MLflow params cannot change
        for i in range(0, len(params), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[i : i + PARAMS_PER_CALL])
        if changed:
            self.client.set_tag(self.run_id, "modelcycle.changed_on_resume", "; ".join(changed)[:MAX_PARAM_LENGTH])

    def _log_metrics(self, metrics: dict) -> None:
        """During training: a tracking hiccup must not stop the training it only observes. What is
        missed is sent at the end, from metrics.jsonl."""
        if self.run_id is None or self.lost:
            return
        try:
            self._send([metrics])
        except Exception as exc:
            self.lost = f"step {metrics.get('step')}: {_first_line(exc)}"
            warn(f"MLflow logging failed at {self.lost}; training goes on, and the end of the run tries again")

    def _sync(self, folder: Path) -> None:
        """Send what metrics.jsonl has and MLflow has not: the part of a resumed run trained
        without tracking, or what a failed request missed."""
        self._send(MetricsLog(folder / "metrics.jsonl").read())
        self.lost = None

    def _send(self, rows: list[dict]) -> None:
        from mlflow.entities import Metric

        stamp, fresh, queued = int(time.time() * 1000), [], dict(self.logged)
        for row in rows:
            step = int(row.get("step", 0))
            epoch_row = "epoch_time_s" in row  # its train_* are epoch averages: the log windows own train_* names
            for key, value in row.items():
                name = f"epoch_{key}" if epoch_row and key.startswith("train_") else key
                number = isinstance(value, int | float) and not isinstance(value, bool)
                if key != "step" and number and step > queued.get(name, -1):
                    fresh.append(Metric(name, float(value), stamp, step))
                    queued[name] = step
        for i in range(0, len(fresh), METRICS_PER_CALL):
            chunk = fresh[i : i + METRICS_PER_CALL]
            self.client.log_batch(self.run_id, metrics=chunk)
            self.logged.update({m.key: max(m.step, self.logged.get(m.key, -1)) for m in chunk})

    def _log_files(self, folder: Path) -> None:
        for name in ("config.yaml", "metrics.jsonl", "events.log"):
            if (folder / name).is_file():
                self.client.log_artifact(self.run_id, str(folder / name))

    def _write_record(self, **extra: Any) -> None:
        path = self.run_dir / RECORD
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads(path.read_text())
            if previous.get("run_id") == self.run_id:
                extra = {**previous, **extra}
        record = {
            **extra,
            "tracking_uri": self.uri,
            "experiment": self.settings.experiment,
            "experiment_id": self.experiment_id,
            "run_id": self.run_id,
        }
        write_json(path, record)


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return text if len(text) <= 400 else text[:400] + "..."
