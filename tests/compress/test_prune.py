"""Pruning: sparsity reached, whole filters silenced, BatchNorm re-estimated, zeros held through
fine-tuning and its resumption, figures recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

import modelcycle
from helpers import assert_mentions, assert_user_error, copy_run, run_cli
from modelcycle.compress.prune import prune_model
from modelcycle.data.manifest import PreparedData
from modelcycle.engine.callbacks import Callback
from modelcycle.errors import UserError
from modelcycle.evaluation.inference import preprocess
from modelcycle.packages import load_model
from modelcycle.runs import Run

SOURCE_LR = 0.01  # tiny_overrides' train.lr


@pytest.fixture(scope="module")
def trained(trained: Path, tmp_path_factory) -> Path:
    """This module's copy of the shared run (tests/conftest.py), whose recipe has EMA on, so
    fine-tuning also has the EMA copy to keep pruned, and a checkpoint every 2 steps, so a
    fine-tune on its recipe can be interrupted mid-epoch. A copy: evaluating it writes a report."""
    return copy_run(trained, tmp_path_factory.mktemp("prune"))


@pytest.fixture(scope="module")
def pruned(trained: Path, tmp_path_factory) -> dict[str, Path]:
    """Packages (0 epochs) and fine-tuned runs (1 epoch) for both methods at 50 %."""
    root = tmp_path_factory.mktemp("pruned")
    out = {}
    for method in ("unstructured", "structured"):
        prune_model(trained, root / f"{method}-0", 0.5, method=method, progress=False)
        out[f"{method}-0"] = root / f"{method}-0" / "model"
    prune_model(trained, root / "unstructured-1", 0.5, finetune_epochs=1, progress=False)
    out["unstructured-1"] = root / "unstructured-1"
    # the structured fine-tune goes through the command line, as a user runs it
    result = run_cli(
        "compress", trained, "--prune", "0.5", "--prune-method", "structured", "--finetune-epochs", "1",
        "--out", root / "structured-1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_mentions(
        result.stderr,
        "val accuracy, source",
        "val accuracy, pruned + BatchNorm re-estimated",
        "val accuracy, fine-tuned",
        "sparsity, prunable weights",
    )
    out["structured-1"] = root / "structured-1"
    return out


def layers(trained: Path) -> tuple[list[str], list[str]]:
    """(prunable, dense) weight names: every conv/linear weight; the first and last stay dense."""
    model, _ = load_model(trained)
    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    return names[1:-1], [names[0], names[-1]]


def weights(path: Path) -> dict[str, torch.Tensor]:
    package = path / "model" if (path / "model").is_dir() else path
    return load_file(package / "model.safetensors")


def zero_fraction(state: dict[str, torch.Tensor], names: list[str]) -> float:
    return sum(int((state[n] == 0).sum()) for n in names) / sum(state[n].numel() for n in names)


def record(path: Path) -> dict:
    package = path / "model" if (path / "model").is_dir() else path
    return json.loads((package / "modelcycle.json").read_text())


@pytest.mark.parametrize("method", ["unstructured", "structured"])
def test_sparsity_reached_matches_the_target_in_a_plain_package(trained: Path, pruned: dict, method: str):
    prunable, dense = layers(trained)
    state, source = weights(pruned[f"{method}-0"]), weights(trained)
    assert state.keys() == source.keys()  # a plain state_dict: no weight_orig / weight_mask
    assert zero_fraction(state, prunable) == pytest.approx(0.5, abs=0.02)
    assert all(torch.equal(state[n], source[n]) for n in dense)
    reached = record(pruned[f"{method}-0"])["pruning"]["sparsity"]
    assert reached["prunable"] == pytest.approx(zero_fraction(state, prunable))
    everything = [n for n in state if n.endswith((".weight", ".bias"))]  # the parameters (no BN buffers)
    assert reached["overall"] == pytest.approx(zero_fraction(state, everything))
    model, _ = load_model(pruned[f"{method}-0"])  # the normal architecture loads it
    assert isinstance(model, nn.Module)


def test_unstructured_zeroes_the_smallest_weights_over_the_whole_net(trained: Path, pruned: dict):
    prunable, _ = layers(trained)
    state, source = weights(pruned["unstructured-0"]), weights(trained)
    zeroed = torch.cat([source[n][state[n] == 0].abs() for n in prunable])
    kept = torch.cat([source[n][state[n] != 0].abs() for n in prunable])
    assert zeroed.max() <= kept.min()
    per_layer = [float((state[n] == 0).float().mean()) for n in prunable]
    assert max(per_layer) - min(per_layer) > 0.05  # one global threshold, not one ratio per layer


def test_structured_zeroes_whole_filters_and_their_channels_output_nothing(trained: Path, pruned: dict):
    prunable, _ = layers(trained)
    state = weights(pruned["structured-0"])
    model, manifest = load_model(pruned["structured-0"])
    outputs = {}
    for name in prunable:  # simple_cnn: features.<i>.0 is a conv, features.<i>.1 its BatchNorm
        block = model.get_submodule(name.removesuffix(".0.weight"))
        block.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
    images = preprocess(manifest, PreparedData.open(manifest["data_root"]).split("val"))
    with torch.no_grad():
        model(images)
    for name in prunable:
        w = state[name]
        dead = (w.flatten(1) == 0).all(1)
        assert int(dead.sum()) == round(0.5 * w.shape[0])
        assert ((w.flatten(1) == 0).any(1) == dead).all()  # a filter is zero whole, or not pruned
        assert (outputs[name][:, dead] == 0).all()  # conv-BN-ReLU of a pruned filter: exactly 0
        assert (outputs[name][:, ~dead] != 0).any()


@pytest.mark.parametrize("method", ["unstructured", "structured"])
def test_fine_tuning_keeps_every_pruned_weight_exactly_zero(trained: Path, pruned: dict, method: str):
    # Unstructured zeros regrow at once without the masks (checked by disabling them). A silenced
    # conv-BN-ReLU channel gets no gradient at all (gamma = beta = 0, ReLU'(0) = 0), so the
    # structured case holds even without them; it checks that nothing else revives it (EMA is on).
    prunable, _ = layers(trained)
    before, after = weights(pruned[f"{method}-0"]), weights(pruned[f"{method}-1"])
    moved = 0
    for name, w in before.items():
        if name.endswith((".weight", ".bias")):
            assert (after[name][w == 0] == 0).all(), name
            moved += int((after[name] != w).sum())
    assert moved > 0  # fine-tuning did change the kept weights
    assert zero_fraction(after, prunable) == pytest.approx(zero_fraction(before, prunable))


def test_fine_tuned_run_is_a_normal_run_that_evaluates(trained: Path, pruned: dict):
    run = pruned["structured-1"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    # structured: the source run's lr by default (a tenth, as for unstructured, is too timid)
    assert config["train"]["epochs"] == 1 and config["train"]["lr"] == pytest.approx(SOURCE_LR)
    assert (run / "metrics.jsonl").is_file() and (run / "checkpoints" / "last.pt").is_file()
    metrics = modelcycle.evaluate(run)
    assert metrics["accuracy"] == pytest.approx(record(run)["pruning"]["accuracy"]["finetuned"])


def test_the_manifest_records_the_figures(trained: Path, pruned: dict):
    source = modelcycle.evaluate(trained)["accuracy"]
    for key, path in pruned.items():
        manifest = record(path)
        p = manifest["pruning"]
        assert (p["method"], p["target"], p["finetune_epochs"]) == (key.split("-")[0], 0.5, int(key[-1]))
        assert p["accuracy"]["source"] == pytest.approx(source)
        assert Path(manifest["source_package"]) == (trained / "model").resolve()
        assert manifest["classes"] == record(trained)["classes"]
        assert (p["accuracy"]["finetuned"] is None) == (p["finetune_epochs"] == 0)
    # without fine-tuning the package is the pruned net with its BatchNorm re-estimated
    package = pruned["unstructured-0"]
    figures = record(package)["pruning"]["accuracy"]
    assert modelcycle.evaluate(package)["accuracy"] == pytest.approx(figures["recalibrated"])


def test_batchnorm_statistics_are_re_estimated_on_the_training_images(trained: Path, pruned: dict, tmp_path: Path):
    stale_package = tmp_path / "off" / "model"
    off = prune_model(trained, tmp_path / "off", 0.5, method="structured", recalibrate=0, progress=False)
    assert off["pruning"]["recalibrate"] == 0 and off["pruning"]["accuracy"]["recalibrated"] is None
    # with --recalibrate 0 the package is the pruned net as it is, with the dense net's statistics
    assert modelcycle.evaluate(stale_package)["accuracy"] == pytest.approx(off["pruning"]["accuracy"]["pruned"])
    source, stale, fresh = weights(trained), weights(stale_package), weights(pruned["structured-0"])
    stats = [n for n in source if n.endswith(("running_mean", "running_var"))]
    assert all(torch.equal(stale[n], source[n]) for n in stats)
    assert not all(torch.equal(fresh[n], source[n]) for n in stats)

    # the default: each BatchNorm's statistics are those of its input in the pruned net, over the
    # training images (fewer than 512 here, so all of them)
    model, manifest = load_model(pruned["structured-0"])
    train = PreparedData.open(manifest["data_root"]).split("train")
    assert record(pruned["structured-0"])["pruning"]["recalibrate"] == len(train)
    inputs = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(lambda _m, x, _out, name=name: inputs.__setitem__(name, x[0]))
    with torch.no_grad():
        model(preprocess(manifest, train))
    silenced = 0
    for name, x in inputs.items():
        per_channel = x.transpose(0, 1).flatten(1)
        dead = fresh[f"{name}.weight"] == 0  # gamma zeroed: a pruned filter's channel
        mean, var = fresh[f"{name}.running_mean"], fresh[f"{name}.running_var"]
        assert torch.allclose(mean[~dead], per_channel.mean(1)[~dead], rtol=1e-3, atol=1e-4), name
        assert torch.allclose(var[~dead], per_channel.var(1)[~dead], rtol=1e-3, atol=1e-4), name
        # a silenced channel's input is all zeros: reset statistics, and it still outputs 0
        assert (per_channel[dead] == 0).all() and (mean[dead] == 0).all() and (var[dead] == 1).all()
        silenced += int(dead.sum())
    assert silenced > 0


class Killed(Exception):
    """What the process dying looks like from inside: no checkpoint of its own, no clean-up."""


class KillAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer) -> None:
        if trainer.state.step == self.step:
            raise Killed


def test_an_interrupted_fine_tune_resumes_with_the_same_zeros(trained: Path, pruned: dict, tmp_path: Path):
    # unstructured: its zeros regrow at the first step when the masks are not applied again
    out, straight = tmp_path / "killed", pruned["unstructured-1"]
    with pytest.raises(Killed):
        prune_model(trained, out, 0.5, finetune_epochs=1, progress=False, callbacks=[KillAt(3)])
    checkpoint = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["state"]["step"] == 2  # the recipe checkpoints every 2 steps; step 3 is lost
    zeros = {n: w == 0 for n, w in weights(pruned["unstructured-0"]).items() if n.endswith(".weight")}
    assert all((checkpoint["model"][n][z] == 0).all() for n, z in zeros.items())

    # `train --resume` would continue without the masks: refused, with the command that keeps them
    with pytest.raises(UserError, match=r"compress .* --resume") as refused:
        modelcycle.train(Run(out).config, resume=True, progress=False)
    assert str(trained) in str(refused.value) and "--prune-method unstructured" in str(refused.value)
    with pytest.raises(UserError, match="other settings"):  # other masks would mix two runs
        prune_model(trained, out, 0.6, finetune_epochs=1, resume=True, progress=False)

    manifest = prune_model(trained, out, 0.5, finetune_epochs=1, resume=True, progress=False)
    assert "resumed from step=2" in (out / "events.log").read_text()
    resumed, reference = weights(out), weights(straight)  # the uninterrupted fine-tune
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[n], reference[n]) for n in reference)  # bit for bit
    assert all((resumed[n][z] == 0).all() for n, z in zeros.items())
    assert manifest["pruning"] == record(straight)["pruning"]


def test_a_bare_package_is_fine_tuned_from_a_config_built_from_its_manifest(pruned: dict, tmp_path: Path):
    manifest = prune_model(pruned["unstructured-0"], tmp_path / "again", 0.6, finetune_epochs=1, progress=False)
    config = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    arch = record(pruned["unstructured-0"])["architecture"]
    # the architecture comes from the manifest; the other model keys (freeze, lora ...) keep their defaults
    assert {k: config["model"][k] for k in ("name", "args")} == {"name": arch["name"], "args": arch["args"]}
    assert config["model"]["freeze"] == "none" and config["model"]["init_from"] is None
    assert config["data"]["root"] == record(pruned["unstructured-0"])["data_root"]
    assert config["train"]["lr"] == pytest.approx(modelcycle.load_config().train.lr / 10)
    assert manifest["pruning"]["sparsity"]["prunable"] == pytest.approx(0.6, abs=0.02)


def test_bad_inputs_are_user_errors(trained: Path, pruned: dict, tmp_path: Path):
    assert_user_error(run_cli("compress", trained, "--out", tmp_path / "x"), "--quantize int8", "--prune")
    result = run_cli("compress", trained, "--quantize", "int8", "--prune", "0.5", "--out", tmp_path / "x")
    assert_user_error(result, "exactly one")
    assert_user_error(run_cli("compress", trained, "--prune", "1.5", "--out", tmp_path / "x"), "--prune 1.5")
    with pytest.raises(UserError, match="--prune 0"):
        prune_model(trained, tmp_path / "x", 0)
    with pytest.raises(UserError, match="--prune-method 'random'"):
        prune_model(trained, tmp_path / "x", 0.5, method="random")
    with pytest.raises(UserError, match="already holds a run with checkpoints; add --resume to continue it"):
        prune_model(trained, pruned["unstructured-1"], 0.5, finetune_epochs=1)
    with pytest.raises(UserError, match="--finetune-epochs"):
        prune_model(trained, tmp_path / "x", 0.5, lr=0.1)
    with pytest.raises(UserError, match="--recalibrate -1"):
        prune_model(trained, tmp_path / "x", 0.5, recalibrate=-1)
    with pytest.raises(UserError, match="--resume continues an interrupted fine-tune"):
        prune_model(trained, tmp_path / "x", 0.5, resume=True)
    result = run_cli("compress", trained, "--quantize", "int8", "--resume", "--out", tmp_path / "x")
    assert_user_error(result, "--resume go with --prune")
    onnx_package = tmp_path / "int8"  # what `compress --quantize int8` writes: backend onnx
    shutil.copytree(trained / "model", onnx_package)
    manifest = record(onnx_package)
    (onnx_package / "modelcycle.json").write_text(json.dumps({**manifest, "backend": "onnx"}))
    with pytest.raises(UserError, match="prune the original run"):
        prune_model(onnx_package, tmp_path / "x", 0.5)
    assert not (tmp_path / "x").exists()
