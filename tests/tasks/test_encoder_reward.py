"""A sentence encoder as the reward model (all-MiniLM-L6-v2, shipped offline by a dependency): the
text pair encoding, training and scoring, and PPO against it, whose tokenizer is not the policy's."""

from __future__ import annotations

import json

import pytest

from lm_fixtures import ppo_overrides
from modelcycle import api
from modelcycle.api import train_ppo
from modelcycle.config import load_config
from modelcycle.data.preference_batches import answer_ids, is_text_pair_encoder, prompt_ids
from modelcycle.data.preferences import read_pairs
from modelcycle.models.text import resolve_folder
from modelcycle.packages import open_package
from modelcycle.tasks.reward import reward_scores


@pytest.fixture(scope="module")
def encoder_reward(tmp_path_factory, prefs):
    """One epoch on the first 64 training pairs, the last two MiniLM blocks and the head training."""
    data = tmp_path_factory.mktemp("few-prefs")
    (data / "prefs-train.jsonl").write_text("".join((prefs / "prefs-train.jsonl").read_text().splitlines(True)[:64]))
    (data / "prefs-val.jsonl").write_text((prefs / "prefs-val.jsonl").read_text())
    config = load_config(
        None,
        [
            "run.task=reward",
            "run.name=encoder-reward",
            f"run.dir={tmp_path_factory.mktemp('runs')}",
            "model.name=all-MiniLM-L6-v2",
            "model.freeze=all_but_last:2",
            f"data.root={data}",
            "lm.context_length=96",
            "train.epochs=1",
            "train.batch_size=16",
            "train.lr=1e-4",
            "train.schedule=none",
        ],
    )
    return api.train(config, progress=False)


def test_an_encoder_reads_the_pair_as_cls_prompt_sep_answer_sep():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_folder("all-MiniLM-L6-v2"))
    assert is_text_pair_encoder(tokenizer)
    prompt = prompt_ids(tokenizer, [{"role": "user", "content": "Explain the for statement."}])
    answer = answer_ids(tokenizer, "It iterates.")
    assert prompt[0] == tokenizer.cls_token_id and prompt[-1] == answer[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(prompt + answer) == "[CLS] explain the for statement. [SEP] it iterates. [SEP]"


def test_encoder_reward_model_trains_and_scores_held_out_pairs_like_its_run(encoder_reward, prefs):
    epochs = encoder_reward.epoch_metrics()
    manifest = json.loads((encoder_reward.model_dir / "modelcycle.json").read_text())
    assert manifest["fine_tuning"]["freeze"] == "all_but_last:2"
    model, tokenizer, _ = open_package(encoder_reward.model_dir).load_scorer()
    pairs = read_pairs(prefs / "prefs-val.jsonl")
    prompts = [p.messages for p in pairs]
    chosen = reward_scores(model, tokenizer, prompts, [p.chosen for p in pairs], 96)
    rejected = reward_scores(model, tokenizer, prompts, [p.rejected for p in pairs], 96)
    accuracy = (chosen > rejected).float().mean().item()
    assert accuracy == pytest.approx(epochs[-1]["val_accuracy"], abs=1e-6)
    assert accuracy > 0.5  # 64 pairs and one epoch already rank held-out topics better than chance


def test_ppo_scores_its_answers_with_an_encoder_on_their_text(tmp_path, prefs, sft_policy, encoder_reward):
    overrides = ppo_overrides(tmp_path, prefs, sft_policy, encoder_reward.model_dir, "ppo.iterations=2")
    run = train_ppo(None, [*overrides, "ppo.whiten_scores=true"])  # the demo's setting with this judge
    manifest = json.loads((run.model_dir / "modelcycle.json").read_text())
    assert manifest["reward_model"]["retokenised"] is True
    assert [m["iteration"] for m in run.metrics] == [1, 2] and all(m["reward"] == m["reward"] for m in run.metrics)
