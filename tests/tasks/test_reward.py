"""The reward model end to end on pydocs pairs: training, held-out accuracy, the package."""

from __future__ import annotations

import json

import pytest
import torch

from modelcycle import api
from modelcycle.data.preferences import read_pairs
from modelcycle.errors import ConfigError
from modelcycle.packages import open_package
from modelcycle.tasks.reward import reward_scores


def test_reward_model_learns_to_rank_pairs_and_reports_held_out_figures(reward_run):
    epochs = reward_run.epoch_metrics()
    assert epochs[-1]["train_accuracy"] >= 0.7
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] - 0.1
    # held-out topics: measured and reported every epoch; the >= 90 % gate is the demo's, whose
    # reward model is a pretrained sentence encoder (configs/lm-reward.yaml, docs/lm-rlhf.md)
    for m in epochs:
        assert 0.0 <= m["val_accuracy"] <= 1.0 and {"val_margin", "val_loss"} <= set(m)


def test_reward_package_loads_in_transformers_and_scores_like_the_run(reward_run, prefs):
    from transformers import AutoModelForSequenceClassification

    folder = reward_run.model_dir
    manifest = json.loads((folder / "modelcycle.json").read_text())
    assert manifest["task"] == "reward" and manifest["source_run"] == str(reward_run.path.resolve())
    plain = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert plain.config.num_labels == 1 and plain.config.pad_token_id is not None
    model, tokenizer, _ = open_package(folder).load_scorer()
    pairs = read_pairs(prefs / "prefs-val.jsonl")
    prompts = [p.messages for p in pairs]
    chosen = reward_scores(model, tokenizer, prompts, [p.chosen for p in pairs], 96)
    rejected = reward_scores(model, tokenizer, prompts, [p.rejected for p in pairs], 96)
    accuracy = (chosen > rejected).float().mean().item()
    assert accuracy == pytest.approx(manifest["metrics"]["val_accuracy"], abs=1e-6)
    # batching and padding do not change a score
    alone = reward_scores(model, tokenizer, prompts[:1], [pairs[0].chosen], 96)
    assert torch.allclose(alone, chosen[:1], atol=1e-4)


def test_a_text_classifier_is_not_taken_for_a_reward_model(reward_run):
    with pytest.raises(Exception, match="not a text classifier"):
        open_package(reward_run.model_dir).load_text_classifier()


def test_reward_run_without_data_root_says_what_to_do(lm_config):
    with pytest.raises(ConfigError, match="data.root is not set"):
        api.train(lm_config("reward", "data.root=null"), progress=False)


def test_preference_runs_read_lm_context_length_and_refuse_data_max_length(lm_config):
    from modelcycle.tasks.reward import pair_length

    assert pair_length(lm_config("reward", "lm.context_length=80")) == 80
    with pytest.raises(ConfigError, match=r"data.max_length=64: .*set lm.context_length=64"):
        pair_length(lm_config("dpo", "data.max_length=64"))
