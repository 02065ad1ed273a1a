"""PPO end to end with a real reward run: metrics, LoRA, the package, NaN rewards, resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lm_fixtures import ppo_overrides
from modelcycle import api
from modelcycle.errors import NonFiniteLossError
from modelcycle.models.text import load_package, package_writer
from modelcycle.tasks.ppo import train_ppo

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
    weights = load_file(run.model_dir / "model.safetensors")
    base = load_file(sft_policy / "model.safetensors")
    assert not any("lora" in k for k in weights)  # merged: a plain Llama
    changed = [k for k in base if not torch.equal(base[k], weights[k])]
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)  # only where LoRA sat


def test_nan_rewards_refuse_the_step_and_keep_the_last_good_checkpoint(tmp_path, prefs, sft_policy, reward_package):
    model, tokenizer, manifest = load_package(reward_package, task="reward")
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
