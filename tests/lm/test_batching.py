"""The continuous batch (``lm/batching.py``): answers that join and leave a running batch step by
step get the same tokens as each prompt generated alone (greedy and seeded sampling alike), the
penalties follow OpenAI's rule, ``echo`` scores the prompt, and models whose cache cannot be
stacked still advance together, one pass per cohort."""

from __future__ import annotations

import pytest
import torch

from modelcycle.lm.batching import ContinuousBatch, answers, choice_seed
from modelcycle.lm.load import load_lm
from modelcycle.lm.sampling import Sampling, penalize_counts

PROMPTS = ["def f(", "The with statement", "class A:", "import os", "for x in y:", "while True:", "Hello", "x = 1 +"]


@pytest.fixture(scope="module")
def lm(tiny_lm_run):
    return load_lm(tiny_lm_run, device="cpu")


def run_staggered(lm, made: list, every: int = 3) -> int:
    """Adds one answer every ``every`` steps until all have joined and ended; returns the steps."""
    batch, waiting, steps = ContinuousBatch(lm), list(made), 0
    while waiting or batch:
        if waiting and steps % every == 0:
            batch.add([waiting.pop(0)])
        batch.step()
        steps += 1
    return steps


@pytest.mark.parametrize(
    "sampling",
    [
        Sampling(temperature=0, max_new_tokens=40),
        Sampling(temperature=0.9, top_k=50, top_p=0.9, repetition_penalty=1.2, seed=5, max_new_tokens=30),
    ],
    ids=["greedy", "seeded"],
)
def test_answers_joining_a_running_batch_equal_each_prompt_alone(lm, sampling):
    made = answers(lm, PROMPTS * 2, sampling)
    steps = run_staggered(lm, made)
    alone = [lm.generate([p], sampling)[0] for p in PROMPTS * 2]
    assert [a.token_ids for a in made] == [g.token_ids for g in alone]
    assert [a.text for a in made] == [g.text for g in alone]
    assert [a.finish_reason for a in made] == [g.finish_reason for g in alone]
    assert steps < sum(len(a.token_ids) for a in made)  # they did share steps


def test_log_probabilities_and_the_alternatives_are_the_models_own(lm):
    sampling = Sampling(temperature=0, max_new_tokens=6, logprobs=True, top_logprobs=3)
    [answer] = answers(lm, ["The for statement"], sampling)
    batch = ContinuousBatch(lm)
    batch.add([answer], echo=True)
    while batch:
        batch.step()
    ids = torch.tensor([answer.prompt + answer.token_ids])
    with torch.no_grad():
        direct = lm.model(ids).logits[0].float().log_softmax(-1)
    width = len(answer.prompt)
    for step, (token, logprob, top) in enumerate(
        zip(answer.token_ids, answer.logprobs, answer.top_logprobs, strict=True)
    ):
        row = direct[width - 1 + step]
        assert token == int(row.argmax())
        assert logprob == pytest.approx(float(row[token]), abs=1e-4)
        assert [t for t, _ in top] == row.topk(3).indices.tolist()
    assert answer.prompt_logprobs[0] is None
    for position, (logprob, top) in enumerate(answer.prompt_logprobs[1:], start=1):
        assert logprob == pytest.approx(float(direct[position - 1, answer.prompt[position]]), abs=1e-4)
        assert len(top) == 3


def test_echo_with_no_new_tokens_scores_the_prompt_alone(lm):
    [answer] = answers(lm, ["The for statement"], Sampling(max_new_tokens=1, logprobs=True), limit=0)
    batch = ContinuousBatch(lm)
    batch.add([answer], echo=True)
    batch.step()
    assert not batch and answer.done and answer.token_ids == []
    assert len(answer.prompt_logprobs) == len(answer.prompt)


def test_presence_and_frequency_penalties_follow_openais_rule(lm):
    logits = torch.tensor([[1.0, 1.0, 1.0]])
    counts = torch.tensor([[0.0, 1.0, 3.0]])
    assert penalize_counts(logits, counts, 0.5, 0.25).tolist() == [[1.0, 0.25, -0.25]]
    # a greedy answer under a strong frequency penalty, against the same rule applied by hand
    sampling = Sampling(temperature=0, max_new_tokens=12, frequency_penalty=2.0, presence_penalty=0.5)
    [answer] = answers(lm, ["The for statement"], sampling)
    run_staggered(lm, [answer])
    ids, counts = lm.encode("The for statement"), torch.zeros(lm.model.config.vocab_size)
    expected = []
    with torch.no_grad():
        for _ in range(len(answer.token_ids)):
            logits = lm.model(torch.tensor([ids + expected])).logits[0, -1].float()
            token = int(penalize_counts(logits, counts, 0.5, 2.0).argmax())
            expected.append(token)
            counts[token] += 1
    assert answer.token_ids == expected


def test_n_answers_to_one_prompt_sample_with_their_own_seeds(lm):
    sampling = Sampling(temperature=1.0, max_new_tokens=10, seed=11)
    made = answers(lm, ["def f("], sampling, n=3)
    run_staggered(lm, made, every=1)
    assert made[0].token_ids == lm.generate(["def f("], sampling)[0].token_ids  # the first keeps the seed
    assert len({tuple(a.token_ids) for a in made}) > 1
    assert [choice_seed(11, j) for j in range(3)][0] == 11 and choice_seed(None, 2) is None


def test_a_dropped_answer_leaves_and_the_others_go_on(lm):
    greedy = Sampling(temperature=0, max_new_tokens=30)
    made = answers(lm, PROMPTS[:4], greedy)
    batch = ContinuousBatch(lm)
    batch.add(made)
    batch.step()
    batch.drop(made[1:2])
    while batch:
        batch.step()
    alone = [lm.generate([p], greedy)[0].token_ids for p in PROMPTS[:4]]
    assert [a.token_ids for i, a in enumerate(made) if i != 1] == [t for i, t in enumerate(alone) if i != 1]
    assert len(made[1].token_ids) == 1


def test_caches_that_cannot_be_stacked_advance_as_cohorts(lm, monkeypatch):
    import modelcycle.lm.batching as batching

    monkeypatch.setattr(batching, "stackable", lambda cache: False)
    greedy = Sampling(temperature=0, max_new_tokens=20)
    made = answers(lm, PROMPTS[:4], greedy)
    run_staggered(lm, made, every=2)
    assert [a.token_ids for a in made] == [lm.generate([p], greedy)[0].token_ids for p in PROMPTS[:4]]
