"""PPO end to end with a real reward run: metrics, LoRA, the package, NaN rewards, resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lm_fixtures import ppo_overrides
from modelcycle import api
from modelcycle.api import train_ppo
from modelcycle.errors import NonFiniteLossError
from modelcycle.models.text import package_writer
from modelcycle.packages import open_package

FIGURES = {
    "reward",
    "kl",
    "kl_coef",
    "entropy",
    "clipfrac",
    "value_loss",
    "policy_loss",
    "rollout_s",
    "score_s",
    "update_s",
}


@pytest.fixture
def reward_package(reward_run):
    return reward_run.model_dir


def test_ppo_with_lora_logs_every_figure_and_writes_a_causal_lm(tmp_path, prefs, sft_policy, reward_package):
    overrides = ppo_overrides(tmp_path, prefs, sft_policy, reward_package, "model.lora.r=4", "ppo.kl_target=0.5")
    run = train_ppo(None, overrides)
    lines = run.metrics
    assert [m["iteration"] for m in lines] == [1, 2, 3]
    assert all(set(m) >= FIGURES and all(map(lambda v: v == v, m.values())) for m in lines)
    assert lines[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout is the reference's own
    assert abs(lines[-1]["kl"]) > 1e-3  # the updates moved the policy off the reference (a sampled estimate)
    assert lines[-1]["kl_coef"] != lines[0]["kl_coef"]  # adaptive: the KL is off its target
    manifest = json.loads((run.model_dir / "modelcycle.json").read_text())
    assert manifest["task"] == "ppo" and manifest["fine_tuning"]["lora"]["r"] == 4
    policy = json.loads((sft_policy / "modelcycle.json").read_text())
    assert manifest["end_of_turn"] == policy["end_of_turn"] and policy["end_of_turn"]["token"] == "<|im_end|>"
    weights = load_file(run.model_dir / "model.safetensors")
    base = load_file(sft_policy / "model.safetensors")
    assert not any("lora" in k for k in weights)  # merged: a plain Llama
    changed = [k for k in base if not torch.equal(base[k], weights[k])]
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)  # only where LoRA sat


def test_nan_rewards_refuse_the_step_and_keep_the_last_good_checkpoint(tmp_path, prefs, sft_policy, reward_package):
    model, tokenizer, manifest = open_package(reward_package).load_scorer()
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    broken = tmp_path / "broken-reward"
    keep = {k: v for k, v in manifest.items() if k in ("task", "backend", "layout", "architecture", "preprocessing")}
    package_writer(model, tokenizer)(broken, model.state_dict(), keep)
    good = ppo_overrides(tmp_path, prefs, sft_policy, reward_package, "ppo.iterations=1")
    train_ppo(None, good)
    last = tmp_path / "runs" / "run" / "checkpoints" / "last.pt"
    before = last.read_bytes()
    bad = ppo_overrides(tmp_path, prefs, sft_policy, broken, "ppo.iterations=2")
    with pytest.raises(NonFiniteLossError, match="step was refused") as info:
        train_ppo(None, bad, resume=True)
    assert f"the last good checkpoint {last} is kept" in str(info.value)
    assert last.read_bytes() == before
    events = (tmp_path / "runs" / "run" / "events.log").read_text()
    assert "resumed from iteration 1" in events and "iteration 2: the reward model returned NaN" in events


def test_ppo_needs_its_own_verb_and_both_models(tmp_path):
    from modelcycle.config import load_config
    from modelcycle.errors import ConfigError, UserError

    with pytest.raises(UserError, match="modelcycle lm ppo"):
        api.train(load_config(None, ["run.task=ppo", f"run.dir={tmp_path}"]), progress=False)
    with pytest.raises(ConfigError, match="ppo.policy and ppo.reward"):
        train_ppo(None, [f"run.dir={tmp_path}", "policy=runs/x"])


def _as_config(overrides: list[str]) -> list[str]:
    """``policy=``/``reward=`` are the verb's short forms; a plain config spells ppo.policy/ppo.reward."""
    return [f"ppo.{o}" if o.split("=", 1)[0] in ("policy", "reward") else o for o in overrides]


def test_ppo_on_the_run_context_ctrl_c_saves_exits_130_and_resumes_to_the_same_weights(
    tmp_path, prefs, sft_policy, reward_package
):
    """Issue 15: PPO runs on the run context every loop shares: `modelcycle.train` takes run.task=ppo,
    Ctrl-C finishes the iteration, saves and exits 130, --resume ends with the same weights as an
    uninterrupted run, and `modelcycle runs` shows each run as it ended (not "unknown")."""
    from helpers import InterruptAt
    from modelcycle.config import load_config
    from modelcycle.engine.trainer import TrainingInterrupted
    from modelcycle.track.listing import list_runs
    from modelcycle.track.status import Status

    overrides = ppo_overrides(tmp_path, prefs, sft_policy, reward_package, "train.schedule=cosine")
    straight = api.train(
        load_config(None, ["run.task=ppo", "run.name=straight", *_as_config(overrides)]), progress=False
    )
    assert [m["iteration"] for m in straight.metrics] == [1, 2, 3]
    lrs = [m["lr"] for m in straight.metrics]
    assert lrs[0] > lrs[1] > lrs[2]  # train.schedule=cosine over the iterations' optimizer steps

    cut = [*overrides, "run.name=cut"]
    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT at iteration 1") as stopped:
        train_ppo(None, cut, progress=False, callbacks=[InterruptAt(1)])
    assert stopped.value.exit_code == 130
    run_dir = tmp_path / "runs" / "cut"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
    assert {s.name: s.status for s in list_runs(tmp_path / "runs").runs}["cut"] == Status("interrupted", "resumable")

    resumed = train_ppo(None, cut, resume=True, progress=False)
    events = (run_dir / "events.log").read_text()
    assert "resumed from iteration 1" in events and "fit end step=3" in events
    assert [m["iteration"] for m in resumed.metrics] == [1, 2, 3]
    ours, theirs = (
        load_file(resumed.model_dir / "model.safetensors"),
        load_file(straight.model_dir / "model.safetensors"),
    )
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    status = {s.name: s.status for s in list_runs(tmp_path / "runs").runs}
    assert status["straight"] == Status("finished") and status["cut"] == Status("finished")


def test_a_nan_policy_loss_stops_ppo_before_it_is_saved(tmp_path, prefs, sft_policy, reward_package, monkeypatch):
    """The non-finite guard covers PPO's losses too, not only the reward."""
    from modelcycle.tasks.ppo import PPOLoop

    real = PPOLoop._iteration

    def poisoned(self, prompts, messages):
        figures = real(self, prompts, messages)
        if self.state.step == 1:  # the second iteration's update went NaN
            self.ctx.note_loss(torch.tensor(float("nan")), self.state.step + 1)
        return figures

    monkeypatch.setattr(PPOLoop, "_iteration", poisoned)
    with pytest.raises(NonFiniteLossError, match="at iteration 2"):
        train_ppo(None, ppo_overrides(tmp_path, prefs, sft_policy, reward_package), progress=False)
    run_dir = tmp_path / "runs" / "run"
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 1
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
    assert "non-finite loss at iteration 2" in (run_dir / "events.log").read_text()


def test_train_keys_the_ppo_loop_does_not_read_are_refused(tmp_path):
    """Issue 15: `train.precision=bf16` with run.task=ppo did nothing; it is a ConfigError naming the
    key, raised before any work (no run folder), while the keys PPO reads and the recipe pass."""
    from pathlib import Path

    from modelcycle.config import load_config
    from modelcycle.errors import ConfigError
    from modelcycle.tasks.ppo import refuse_unread

    base = ["run.task=ppo", f"run.dir={tmp_path}", "ppo.policy=runs/x", "ppo.reward=runs/y"]
    with pytest.raises(ConfigError, match=r"train.epochs=5, train.precision=bf16: run.task=ppo does not read them"):
        api.train(load_config(None, [*base, "train.precision=bf16", "train.epochs=5"]), progress=False)
    assert not (tmp_path / "run").exists()
    refuse_unread(load_config(None, [*base, "train.precision=fp32", "train.lr=1e-5", "train.schedule=cosine"]))
    refuse_unread(load_config(Path(__file__).parents[2] / "configs" / "lm-ppo.yaml"))
