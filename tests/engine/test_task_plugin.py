"""A task written outside modelcycle, as a user would: the plugin below lives in this file (not in
src/), is registered, trains on the engine, survives SIGKILL and resumes to the same bits,
is packaged, evaluated, and listed by `modelcycle runs`. Nothing in src/ names it.

The training processes find it through MODELCYCLE_TASKS (the module on PYTHONPATH); this process
registers it with modelcycle.register_task.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import modelcycle
from modelcycle.errors import ConfigError

pytestmark = pytest.mark.slow

# A small regression task: y = a noisy function of x, an MLP with dropout (so resume must restore
# the RNG), a shuffled resumable loader, MSE. The step sleeps a little so a kill lands mid-run.
PLUGIN_SOURCE = """
import json
import time
from pathlib import Path

import torch
from torch import nn
from safetensors.torch import load_file

from modelcycle import runs
from modelcycle.data.datasets import memory_loader
from modelcycle.errors import ConfigError
from modelcycle.tasks.plugin import TaskParts, TaskPlugin


def build(args):
    width = int(args.get("width", 16))
    return nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Dropout(0.2), nn.Linear(width, 1))


def rows(root, split):
    data = json.loads((Path(root) / f"{split}.json").read_text())
    return torch.tensor(data["x"]), torch.tensor(data["y"])


class Rows(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key  # training's sampler adds an augmentation seed
        return self.x[index], self.y[index]


def collate(batch):
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


class Regression:
    metric_names = {"train": ("loss",), "val": ("loss",)}

    def training_step(self, model, batch):
        time.sleep(0.01)
        x, y = batch
        loss = nn.functional.mse_loss(model(x)[:, 0], y)
        return loss, {"loss": loss.detach() * len(y), "count": torch.tensor(float(len(y)))}

    def validation_step(self, model, batch):
        x, y = batch
        loss = nn.functional.mse_loss(model(x)[:, 0], y, reduction="sum")
        return {"loss": loss, "count": torch.tensor(float(len(y)))}

    def summarize(self, sums):
        return {"loss": sums["loss"] / max(sums.get("count", 0.0), 1.0)}


def setup(config, ctx):
    if not config.data.root:
        raise ConfigError("data.root: the folder with train.json and val.json")
    torch.manual_seed(config.train.seed)
    model = build(config.model.args)
    t = config.train
    sets = {split: Rows(*rows(config.data.root, split)) for split in ("train", "val")}
    train = memory_loader(sets["train"], collate, t.batch_size, True, seed=t.seed)
    val = memory_loader(sets["val"], collate, config.eval.batch_size, False, seed=t.seed)
    meta = {"task": "stub_regression", "backend": "torch", "args": dict(config.model.args)}
    meta["data_root"] = config.data.root
    return TaskParts(Regression(), model, train, val, meta, runs.write_package)


def evaluate(run, split="val", data=None, backend="auto"):
    manifest = runs.read_manifest(run.path if hasattr(run, "path") else run)
    folder = Path(manifest["_dir"])
    model = build(manifest["args"])
    model.load_state_dict(load_file(folder / manifest["weights"]["file"]))
    x, y = rows(data or manifest["data_root"], split)
    with torch.no_grad():
        mse = float(nn.functional.mse_loss(model.eval()(x)[:, 0], y))
    return {"task": "stub_regression", "split": split, "mse": mse, "num_samples": len(y)}


PLUGIN = TaskPlugin(
    name="stub_regression",
    setup=setup,
    evaluate=evaluate,
    defaults={"train": {"monitor": "val_loss", "schedule": "none"}},
    summary_metrics=("val_loss",),
    description="a test's own task",
)
"""

MODULE = "stub_regression_task"


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    (root / f"{MODULE}.py").write_text(PLUGIN_SOURCE)
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 240), ("val", 64)):
        x = torch.randn(n, 4, generator=gen)
        y = torch.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + 0.05 * torch.randn(n, generator=gen)
        (root / "data").mkdir(exist_ok=True)
        (root / "data" / f"{split}.json").write_text(json.dumps({"x": x.tolist(), "y": y.tolist()}))
    return root


@pytest.fixture(scope="module")
def registered(plugin_dir: Path):
    spec = importlib.util.spec_from_file_location(MODULE, plugin_dir / f"{MODULE}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return modelcycle.register_task(module.PLUGIN, replace=True)


def _env(plugin_dir: Path) -> dict:
    path = os.pathsep.join(filter(None, [str(plugin_dir), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "MODELCYCLE_TASKS": MODULE, "PYTHONUNBUFFERED": "1"}


def _cmd(plugin_dir: Path, runs: Path, name: str, resume: bool = False) -> list[str]:
    return [
        sys.executable,
        "-m",
        "modelcycle",
        "train",
        "run.task=stub_regression",
        f"data.root={plugin_dir / 'data'}",
        f"run.dir={runs}",
        f"run.name={name}",
        "model.args={width: 16}",
        "train.epochs=3",
        "train.batch_size=8",
        "train.lr=0.01",
        "train.checkpoint_every=5",
        "train.log_every=5",
        *(["--resume"] if resume else []),
    ]


def _checkpoint_id(run: Path):
    try:
        st = (run / "checkpoints" / "last.pt").stat()
        return st.st_ino, st.st_mtime_ns
    except FileNotFoundError:
        return None


def _kill_mid_run(plugin_dir: Path, runs: Path, name: str, resume: bool, rng: random.Random) -> bool:
    """Start training and SIGKILL it soon after it wrote a new checkpoint; False if it finished first."""
    before = _checkpoint_id(runs / name)
    proc = subprocess.Popen(
        _cmd(plugin_dir, runs, name, resume), env=_env(plugin_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if _checkpoint_id(runs / name) not in (None, before):
            time.sleep(rng.uniform(0.0, 0.3))
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        assert proc.returncode == 0, proc.stderr.read().decode()
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def test_a_task_from_outside_src_trains_resumes_packages_evaluates_and_lists(plugin_dir: Path, registered, tmp_path):
    runs = tmp_path / "runs"
    straight = subprocess.run(
        _cmd(plugin_dir, runs, "straight"), env=_env(plugin_dir), capture_output=True, text=True, timeout=600
    )
    assert straight.returncode == 0, straight.stderr
    assert "val_loss=" in straight.stderr + straight.stdout  # the plugin's summary metrics

    rng = random.Random(7)
    kills, resume = 0, False
    while kills < 2 and _kill_mid_run(plugin_dir, runs, "killed", resume, rng):
        kills, resume = kills + 1, True
    assert kills >= 1, "the run finished before it could be killed; the test proved nothing"
    if not (runs / "killed" / "model" / "modelcycle.json").exists():
        finish = subprocess.run(
            _cmd(plugin_dir, runs, "killed", resume=True),
            env=_env(plugin_dir),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert finish.returncode == 0, finish.stderr
    assert "resumed from step=" in (runs / "killed" / "events.log").read_text()

    # the same bits as the run that was never interrupted
    a = load_file(runs / "straight" / "model" / "model.safetensors")
    b = load_file(runs / "killed" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the package records the task; the plugin's defaults were applied to what the command left unset
    manifest = json.loads((runs / "killed" / "model" / "modelcycle.json").read_text())
    assert manifest["task"] == "stub_regression" and manifest["monitor"] == "val_loss"
    saved = (runs / "killed" / "config.yaml").read_text()
    assert "task: stub_regression" in saved and "schedule: none" in saved

    # evaluated in this process, through the registered plugin
    metrics = modelcycle.evaluate(runs / "killed")
    assert metrics["task"] == "stub_regression" and metrics["num_samples"] == 64
    assert metrics["mse"] == pytest.approx(modelcycle.evaluate(runs / "straight")["mse"])
    y = torch.tensor(json.loads((plugin_dir / "data" / "val.json").read_text())["y"])
    assert metrics["mse"] < float(y.var())  # it learned something: better than guessing the mean

    # listed: finished, with its monitored metric
    listed = subprocess.run(
        [sys.executable, "-m", "modelcycle", "runs", str(runs), "--json"],
        env=_env(plugin_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    rows = {row["run"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {"straight", "killed"}
    assert all(row["status"] == "finished" and row["metric"] == "val_loss" for row in rows.values()), rows
    assert rows["killed"]["best"] == pytest.approx(rows["straight"]["best"])


def test_an_unknown_task_names_the_known_ones(registered, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'stub_regression'.*Known tasks: .*classify"):
        modelcycle.train(modelcycle.load_config(None, ["run.task=stub_regresion", f"run.dir={tmp_path}"]))
    with pytest.raises(modelcycle.UserError, match="already registered"):
        modelcycle.register_task(modelcycle.TaskPlugin(name="classify"))
