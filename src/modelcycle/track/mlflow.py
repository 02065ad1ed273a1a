"""Optional MLflow tracking and model registry (``pip install 'modelcycle[mlflow]'``).

The run folder stays the record; MLflow gets a copy as training goes (params, metric histories,
tags) and at the end (files, the model package, a PyTorch model it can load and serve, and a
registry version). MLflow is imported only when ``track.mlflow_uri`` is set: it is a large
optional dependency and slow to import.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelcycle.config import flatten
from modelcycle.errors import UserError
from modelcycle.progress import info, warn
from modelcycle.track import Tracker
from modelcycle.track.listing import show
from modelcycle.track.status import outcome, write_json

if TYPE_CHECKING:
    from modelcycle.config import Config
    from modelcycle.engine.trainer import Trainer
    from modelcycle.runs import Run

RECORD = "mlflow.json"  # in the run folder: where its MLflow run is, so --resume continues that one
EXTRA = "pip install 'modelcycle[mlflow]'"
MAX_PARAM_LENGTH = 6000  # MLflow refuses longer parameter values
PARAMS_PER_CALL = 100  # MLflow's limit per log_batch


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
    with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10"):
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
        self.run_dir = trainer.run_dir
        self.run_id = self._continued() if self.resume else None
        if self.run_id is None:
            tags = {
                "modelcycle.version": _version(),
                "modelcycle.run_dir": str(self.run_dir.resolve()),
                "modelcycle.model": self.config.model.name,
                "modelcycle.task": str(trainer.meta.get("task", "")),
            }
            name = self.settings.run_name or self.config.run.name
            self.run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        self._log_params()
        self._write_record()
        info(f"MLflow: run {self.run_id} in experiment '{self.settings.experiment}' at {self.uri}")

    def on_log(self, trainer: Trainer, metrics: dict) -> None:
        self._log_metrics(metrics)

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        # the epoch's train_* averages get their own names: the log windows already use train_* at these steps
        self._log_metrics({(f"epoch_{k}" if k.startswith("train_") else k): v for k, v in metrics.items()})

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

        try:
            self._log_files(run.path)
            if run.report_dir.is_dir():
                self.client.log_artifacts(self.run_id, str(run.report_dir), "report")
            self.client.log_artifacts(self.run_id, str(run.model_dir), "model")
            logged = self._log_pytorch(run)
            record = {"model_uri": logged.model_uri}
            if self.settings.register:
                version = logged.registered_model_version
                record["registered_model"] = {"name": self.settings.register, "version": version}
                self.client.set_tag(self.run_id, "modelcycle.registered", f"{self.settings.register}/{version}")
                info(f"MLflow: registered model '{self.settings.register}' version {version}")
            self._write_record(**record)
            self.client.set_terminated(self.run_id, "FINISHED")
        except (MlflowException, OSError) as exc:
            raise UserError(
                f"training finished (model package in {run.model_dir}) but logging it to MLflow at {self.uri} "
                f"failed: {_first_line(exc)}; the run folder is complete, fix the store and train again to log it"
            ) from None
        if self.lost:
            warn(f"MLflow has metrics only up to where logging failed ({self.lost}); metrics.jsonl has them all")

    def _log_pytorch(self, run: Run) -> Any:
        """The package's model as an MLflow PyTorch model. torch.export (pt2: no pickle to load)
        keeps the batch dimension free only when the example has more than one row, so it has two."""
        import numpy as np
        import torch

        from modelcycle.runs import load_model

        model, manifest = load_model(run.model_dir)
        arch = manifest["architecture"]
        shape = (2, arch["in_channels"], arch["image_size"], arch["image_size"])
        example = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        with _tracking_uri(self.mlflow, self.uri), _registry_chatter(), self.mlflow.start_run(run_id=self.run_id):
            return self.mlflow.pytorch.log_model(
                model,
                name="pytorch",  # beside model/ (the package) in the run's artifacts
                input_example=example,
                serialization_format="pt2",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],  # skips a slow inference subprocess
                registered_model_name=self.settings.register,
            )

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
        try:
            run = self.client.get_run(record["run_id"])
        except Exception:
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
        if self.run_id is None or self.lost:
            return
        from mlflow.entities import Metric

        step, stamp = int(metrics.get("step", 0)), int(time.time() * 1000)
        fresh = [
            Metric(k, float(v), stamp, step)
            for k, v in metrics.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool) and step > self.logged.get(k, -1)
        ]
        if not fresh:
            return
        try:
            self.client.log_batch(self.run_id, metrics=fresh)
        except Exception as exc:  # a tracking hiccup must not stop the training it only observes
            self.lost = f"step {step}: {_first_line(exc)}"
            warn(f"MLflow logging failed at {self.lost}; training goes on without it")
            return
        self.logged.update({m.key: step for m in fresh})

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


@contextlib.contextmanager
def _tracking_uri(mlflow: Any, uri: str) -> Iterator[None]:
    """log_model and the registry use MLflow's process-wide URIs; set them only while needed."""
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(registry)


@contextlib.contextmanager
def _registry_chatter() -> Iterator[None]:
    """The registry prints its own two lines to stderr, which ours replaces; anything else it
    says (warnings) still shows."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        noise = ("Successfully registered model", "Created version")
        kept = [line for line in captured.getvalue().splitlines() if line.strip() and not line.startswith(noise)]
        if kept:
            print("\n".join(kept), file=sys.stderr)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _version() -> str:
    from modelcycle import __version__

    return __version__
