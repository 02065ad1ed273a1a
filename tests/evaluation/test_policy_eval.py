"""`modelcycle evaluate` on the preference stages, through the real command line."""

from __future__ import annotations

import json

import pytest

from helpers import assert_user_error, run_cli
from modelcycle.evaluation.policy import compare_policies


def test_evaluate_json_on_a_reward_run_prints_pairwise_accuracy(reward_run):
    result = run_cli("evaluate", reward_run.path, "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    packaged = json.loads((reward_run.path / "model" / "modelcycle.json").read_text())["metrics"]  # the best epoch's
    assert metrics["pairwise_accuracy"] == pytest.approx(packaged["val_accuracy"], abs=1e-6)
    assert metrics["num_pairs"] > 0
    # the pydocs pairs hold both kinds in equal numbers, so the overall accuracy is their mean
    by_kind = metrics["accuracy_by_kind"]
    assert set(by_kind) == {"wrong_topic", "shuffled"}
    assert metrics["pairwise_accuracy"] == pytest.approx((by_kind["wrong_topic"] + by_kind["shuffled"]) / 2)


def test_evaluate_against_prints_win_rate_rewards_and_kl(reward_run, sft_policy):
    # a policy against itself: the same seed gives the same answers, so every prompt is a tie
    result = run_cli(
        "evaluate", sft_policy, "--against", sft_policy, "--reward", reward_run.path, "--json", "--samples", "2"
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert set(figures) == {"win_rate", "mean_reward", "baseline_reward", "kl"}
    assert figures["win_rate"] == pytest.approx(0.5) and figures["kl"] == pytest.approx(0.0, abs=1e-5)
    assert figures["mean_reward"] == pytest.approx(figures["baseline_reward"])


def test_comparison_samples_several_answers_to_every_held_out_prompt(reward_run, sft_policy, prefs, tmp_path):
    from lm_fixtures import build_sft_policy
    from modelcycle.data.preferences import read_pairs, unique_prompts

    other = build_sft_policy(tmp_path / "other", prefs, epochs=1, seed=1)
    held_out = [m[-1]["content"] for m in unique_prompts(read_pairs(prefs / "prefs-val.jsonl"))]
    result = compare_policies(sft_policy, other, reward=reward_run.path, samples=3, max_new_tokens=16)
    assert result["num_prompts"] == len(held_out) and result["num_answers"] == 3 * len(held_out)
    assert [s["prompt"] for s in result["samples"]] == [p for p in held_out for _ in range(3)]
    assert result["kl"] is not None and result["kl"] > 0  # same tokenizer: the KL from a barely trained model
    wins = sum(
        (s["reward"] > s["baseline_reward"]) + 0.5 * (s["reward"] == s["baseline_reward"]) for s in result["samples"]
    )
    assert result["win_rate"] == pytest.approx(wins / result["num_answers"])
    # sampled, not greedy: the three answers to a prompt are not all the same text
    answers = [s["answer"] for s in result["samples"]]
    assert any(len(set(answers[i : i + 3])) > 1 for i in range(0, len(answers), 3))
    capped = compare_policies(sft_policy, other, reward=reward_run.path, samples=1, prompts=2, max_new_tokens=4)
    assert [s["prompt"] for s in capped["samples"]] == held_out[:2]


def test_evaluate_against_without_a_reward_model_says_what_to_pass(sft_policy):
    result = run_cli("evaluate", sft_policy, "--against", sft_policy)
    assert_user_error(result, "--reward")


def test_preference_gates_score_the_reward_model_and_a_policy_against_sft(reward_run, sft_policy):
    from modelcycle.evaluation.policy import evaluate_reward
    from modelcycle.evaluation.preference_gates import preference_gates

    # the SFT policy as "PPO": every held-out prompt is a tie, so the win rate is 0.5 and the gate fails
    reward_row, ppo_row = preference_gates(sft_policy, reward_run.path, ppo=sft_policy, samples=2)
    accuracy = evaluate_reward(reward_run.path)["pairwise_accuracy"]
    assert reward_row["value"] == pytest.approx(accuracy) and reward_row["passed"] == (accuracy >= 0.9)
    assert ppo_row["value"] == pytest.approx(0.5) and not ppo_row["passed"]
    assert ppo_row["kl"] == pytest.approx(0.0, abs=1e-5) and "x 2 answers, KL to SFT" in ppo_row["gate"]


def test_gates_with_a_policy_but_no_reward_model_say_what_to_pass(sft_policy):
    result = run_cli("lm", "gates", sft_policy, sft_policy, "--ppo", sft_policy)
    assert_user_error(result, "--reward")
