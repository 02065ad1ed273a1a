"""DPO end to end: the cached reference is exact, the policy learns the preferences, the
reference-free losses load no reference, and the package is a causal LM."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from modelcycle import api
from modelcycle.errors import ConfigError
from modelcycle.tasks import dpo


def test_cached_reference_trains_exactly_like_a_live_one(lm_config):
    runs = {}
    for cache in ("true", "false"):
        config = lm_config("dpo", f"run.name=dpo-{cache}", "train.epochs=1", f"dpo.cache_reference={cache}")
        runs[cache] = api.train(config, progress=False)
    cached, live = (runs[k].epoch_metrics()[-1] for k in ("true", "false"))
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_margin"):
        assert cached[key] == pytest.approx(live[key], abs=1e-4), key
    a, b = (load_file(runs[k].model_dir / "model.safetensors") for k in ("true", "false"))
    assert all(torch.allclose(a[name], b[name], atol=1e-5) for name in a)


def test_dpo_raises_the_implicit_reward_of_chosen_answers(lm_config):
    run = api.train(lm_config("dpo", "train.epochs=3", "train.lr=1e-3", "dpo.beta=0.1"), progress=False)
    epochs = run.epoch_metrics()
    last = epochs[-1]
    assert last["train_accuracy"] >= 0.8 and last["train_margin"] > 0
    assert last["val_accuracy"] >= 0.6 and last["val_margin"] > 0  # held-out topics
    assert last["train_loss"] < epochs[0]["train_loss"]
    from transformers import AutoModelForCausalLM

    manifest = json.loads((run.model_dir / "modelcycle.json").read_text())
    assert manifest["task"] == "dpo" and manifest["dpo"]["beta"] == 0.1
    assert AutoModelForCausalLM.from_pretrained(run.model_dir).config.model_type == "llama"
    assert (run.model_dir / "generation_config.json").is_file()


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_reference_free_losses_load_no_reference(lm_config, loss):
    parts = dpo.setup(lm_config("dpo", f"dpo.loss={loss}"))
    assert parts.task.reference is None and parts.task.cache == {}
    batch = next(iter(parts.train_loader))
    loss_value, sums = parts.task.training_step(parts.model, batch)
    assert torch.isfinite(loss_value) and sums["count"].item() == len(batch["index"])


def test_a_reference_with_another_tokenizer_is_refused(lm_config, tmp_path):
    from lm_fixtures import train_small_tokenizer
    from modelcycle.lm.load import open_lm

    model, _, _ = open_lm(lm_config("dpo").model.init_from)
    other = tmp_path / "other"
    model.save_pretrained(other)
    train_small_tokenizer(other, ["some other text entirely, with other merges"] * 20, vocab=300)
    with pytest.raises(ConfigError, match="tokenizer differs"):
        dpo.setup(lm_config("dpo", f"dpo.reference={other}"))
