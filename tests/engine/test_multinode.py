"""Two nodes for real: two torchrun launchers as separate processes on 127.0.0.1, meeting in a
c10d rendezvous, one training process each (gloo). One node is ``modelcycle train --nnodes 2
--rdzv-endpoint ...`` (the launcher modelcycle runs in its own process), the other a plain
``torchrun`` line as docs/distributed.md gives it for a cluster, so both ways in are covered.

The run must end at the weights and metrics of one process with the same global batch, and its
checkpoint, taken on 2 nodes, must resume on one process to the weights of an uninterrupted
run. A run folder on a shared filesystem is simply the same folder here. The model has no
BatchNorm and no dropout (see tests/engine/test_distributed.py for why)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import assert_user_error, cli_env, read_jsonl, run_cli, tiny_overrides
from modelcycle import api
from modelcycle.config import load_config
from modelcycle.engine import launch
from modelcycle.errors import ConfigError, UserError

MODEL = """
import torch
from torch import nn


def build(in_channels, num_classes, image_size):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, num_classes),
    )
"""
STEPS_PER_EPOCH = 4  # 27 training images in global batches of 8: 8, 8, 8, 3 (the 3 split 1 + 2)
# ``setup`` (tests/engine/conftest.py, as for test_distributed.py): that data, and MODEL as a file


def _overrides(s: dict, name: str, epochs: int) -> list[str]:
    # a constant learning rate, so that 2 epochs extended to 4 on resume are the first 2 of 4
    values = {
        "model__name": s["model"],
        "model__args": "{}",
        "data__crop_scale": "[0.7,1.0]",  # random crops: their seeds come from the global position
        "train__epochs": epochs,
        "train__schedule": "none",
        "train__log_every": 2,
        "eval__batch_size": 4,
    }
    return tiny_overrides(s["root"] / "data", s["root"] / "runs", name, **values)


def _one_process(s: dict, name: str, epochs: int) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each node's process
    try:
        return api.train(load_config(None, _overrides(s, name, epochs)), progress=False).path
    finally:
        torch.set_num_threads(threads)


def _assert_same_weights(run: Path, reference: Path) -> None:
    ours, theirs = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["model"] for r in (run, reference))
    assert list(ours) == list(theirs)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5, msg=key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_train_like_one_process_and_resume_on_one(setup):
    root = setup["root"]
    endpoint = f"127.0.0.1:{_free_port()}"
    args = _overrides(setup, "nodes", epochs=2)
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    node_a = [sys.executable, "-m", "modelcycle", "train", *args, "--nnodes", "2", "--rdzv-endpoint", endpoint]
    node_b = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "modelcycle-nodes",
        "-m", "modelcycle", "train", *args,
    ]  # fmt: skip
    started = time.monotonic()
    logs = [root / "node-a.log", root / "node-b.log"]
    nodes = []
    for command, log, extra in zip((node_a, node_b), logs, ({}, {"GLOO_SOCKET_IFNAME": "lo"}), strict=True):
        with open(log, "w") as out:  # the plain torchrun node sets what the docs tell a cluster user to
            nodes.append(subprocess.Popen(command, env={**env, **extra}, stdout=out, stderr=subprocess.STDOUT))
    try:
        codes = [node.wait(timeout=500) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    assert codes == [0, 0], "\n\n".join(log.read_text()[-5000:] for log in logs)
    two_nodes = time.monotonic() - started

    run = root / "runs" / "nodes"
    reference = _one_process(setup, "one-process-2", epochs=2)
    _assert_same_weights(run, reference)
    ours, theirs = read_jsonl(run / "metrics.jsonl"), read_jsonl(reference / "metrics.jsonl")
    assert [m["step"] for m in ours] == [m["step"] for m in theirs]  # written once, by rank 0 alone
    for a, b in zip(ours, theirs, strict=True):
        for key in ("train_loss", "val_loss"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4), key
        if "val_accuracy" in b:
            assert a["val_accuracy"] == b["val_accuracy"]
    events = (run / "events.log").read_text()
    assert events.count("fit start") == 1 and "processes=2 strategy=ddp backend=gloo" in events
    assert events.count(f"checkpoint step={2 * STEPS_PER_EPOCH} ") == 1
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved["world_size"] == 2 and len(saved["rng_ranks"]) == 2

    # the checkpoint of 2 nodes, continued on one process to 4 epochs = 4 epochs uninterrupted
    resumed = api.train(load_config(None, _overrides(setup, "nodes", epochs=4)), resume=True, progress=False)
    _assert_same_weights(resumed.path, _one_process(setup, "one-process-4", epochs=4))
    events = (run / "events.log").read_text()
    assert f"resumed from step={2 * STEPS_PER_EPOCH} epoch=2" in events
    assert "checkpoint written by 2 process(es), resumed on 1" in events
    print(f"two nodes: {two_nodes:.1f}s for 2 epochs, launchers and imports included")


def test_multinode_options_are_checked_before_anything_starts(tmp_path: Path):
    config = load_config(None, ["train.batch_size=6", f"run.dir={tmp_path}"])
    assert launch.torchrun_args(2, ["train"], 3, "node1:29400", "job")[:5] == [
        "--nnodes=3",
        "--nproc-per-node=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=node1:29400",
        "--rdzv-id=job",
    ]
    launch.check(config, 3, 2, "node1:29400")  # 2 nodes x 3 processes split the global batch of 6
    with pytest.raises(ConfigError, match=r"train.batch_size=6 .* 4 processes"):
        launch.check(config, 2, 2, "node1:29400")
    for endpoint in (None, "node1", "node1:0", ":29400", "node1:port"):
        with pytest.raises(UserError, match="--nnodes needs --rdzv-endpoint HOST:PORT"):
            launch.check(config, 1, 2, endpoint)
    with pytest.raises(UserError, match="with one machine leave it out"):
        launch.check(config, 1, 1, "node1:29400")
    result = run_cli("train", f"data.root={tmp_path}", f"run.dir={tmp_path}", "--nnodes", "2")
    assert_user_error(result, "--nnodes needs --rdzv-endpoint HOST:PORT")
    assert not any(tmp_path.iterdir())
