"""Our decoding loop against transformers' own ``generate`` and against itself (cache on/off,
batched/alone), the sampling settings on a real model, and loading LM folders safely."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from helpers import tampered_copy
from modelcycle.errors import UserError
from modelcycle.lm.generate import PromptTooLong
from modelcycle.lm.load import is_language_model, load_lm
from modelcycle.lm.sampling import Sampling

PROMPTS = ["The for statement", "x", "Explain the while loop in Python, please"]
GREEDY = Sampling(temperature=0, max_new_tokens=12)


@pytest.fixture(scope="module")
def lm(tiny_lm_run):
    return load_lm(tiny_lm_run, device="cpu")


def test_greedy_batch_matches_transformers_generate_with_and_without_cache(lm):
    ids, mask = lm.pad_left([lm.encode(p) for p in PROMPTS])
    reference = lm.model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
    )[:, ids.shape[1] :].tolist()
    no_eos = lm.eos_ids
    lm.eos_ids = []  # compare whole 12-token runs, as transformers was asked to give
    try:
        cached = lm.generate(PROMPTS, GREEDY)
        uncached = lm.generate(PROMPTS, Sampling(temperature=0, max_new_tokens=12, use_cache=False))
    finally:
        lm.eos_ids = no_eos
    assert [g.token_ids for g in cached] == reference
    assert [g.token_ids for g in uncached] == reference
    assert all(g.finish_reason == "length" and len(g.token_ids) == 12 for g in cached)


def test_a_batch_gives_each_prompt_what_it_gets_alone(lm):
    batch = lm.generate(PROMPTS, GREEDY)
    alone = [lm.generate([p], GREEDY)[0] for p in PROMPTS]
    assert [g.text for g in batch] == [g.text for g in alone]
    assert [g.prompt_tokens for g in batch] == [len(lm.encode(p)) for p in PROMPTS]


def test_generation_ends_at_an_eos_id_from_generation_config(lm, tiny_lm_run):
    free = lm.generate(["The for statement"], GREEDY)[0]
    ender = free.token_ids[4]
    first = free.token_ids.index(ender)
    config = lm.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = [*saved, ender]
    try:
        from modelcycle.lm.generate import LanguageModel

        ended = LanguageModel(lm.model, lm.tokenizer).generate(["The for statement"], GREEDY)[0]
    finally:
        config.eos_token_id = saved
    assert ended.finish_reason == "stop"
    assert ended.token_ids == free.token_ids[: first + 1]  # the end token is kept in the ids, not in the text
    assert json.loads((tiny_lm_run / "model" / "generation_config.json").read_text())["eos_token_id"] == lm.eos_ids


def test_a_stop_string_cuts_the_text_and_ends_generation(lm):
    free = lm.generate(["The for statement"], Sampling(temperature=0, max_new_tokens=30))[0]
    stop = free.text[10:13]
    cut = lm.generate(["The for statement"], Sampling(temperature=0, max_new_tokens=30, stop=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index(stop)]
    assert len(cut.token_ids) < len(free.token_ids)


def test_seeded_sampling_repeats_and_top_k_1_is_greedy(lm):
    hot = Sampling(temperature=1.5, max_new_tokens=16, seed=3)
    first = lm.generate(PROMPTS[:1], hot)[0].token_ids
    assert lm.generate(PROMPTS[:1], hot)[0].token_ids == first
    assert lm.generate(PROMPTS[:1], Sampling(temperature=1.5, max_new_tokens=16, seed=4))[0].token_ids != first
    top1 = lm.generate(PROMPTS, Sampling(temperature=1.5, top_k=1, max_new_tokens=12, seed=5))
    assert [g.token_ids for g in top1] == [g.token_ids for g in lm.generate(PROMPTS, GREEDY)]


def test_a_strong_repetition_penalty_never_repeats_a_token(lm):
    prompt = lm.encode("x")
    penalised = lm.generate([prompt], Sampling(temperature=0, max_new_tokens=20, repetition_penalty=1e4))[0]
    ids = prompt + penalised.token_ids
    assert len(set(ids)) == len(ids)


def test_logprobs_are_the_models_own_for_the_sampled_tokens(lm):
    result = lm.generate(["The for statement"], Sampling(temperature=0.8, max_new_tokens=8, seed=0, logprobs=True))[0]
    prompt = lm.encode("The for statement")
    with torch.no_grad():
        logits = lm.model(torch.tensor([prompt + result.token_ids])).logits[0, len(prompt) - 1 : -1]
    expected = (logits / 0.8).log_softmax(-1).gather(-1, torch.tensor(result.token_ids)[:, None]).squeeze(-1)
    assert torch.allclose(torch.tensor(result.logprobs), expected, atol=1e-4)


def test_the_context_limits_prompt_and_answer(lm):
    with pytest.raises(PromptTooLong, match=f"maximum context length is {lm.context_length} tokens"):
        lm.generate([[5] * lm.context_length], GREEDY)
    near = [5] * (lm.context_length - 3)
    result = lm.generate([near], Sampling(temperature=0, max_new_tokens=50))[0]
    if result.finish_reason == "length":  # the room the prompt left, not the 50 asked for
        assert len(result.token_ids) == 3
    else:
        assert len(result.token_ids) <= 3 and result.token_ids[-1] in lm.eos_ids


def test_a_plain_hugging_face_folder_loads_and_answers_alike(lm, plain_hf_folder):
    plain = load_lm(plain_hf_folder, device="cpu")
    assert plain.manifest is None and plain.name == "my-llama"
    assert plain.generate(PROMPTS, GREEDY)[0].text == lm.generate(PROMPTS, GREEDY)[0].text
    assert is_language_model(plain_hf_folder)


def test_unsafe_or_mismatched_folders_are_refused(tiny_lm_run, tmp_path):
    tampered = tampered_copy(tiny_lm_run / "model", tmp_path / "tampered")
    with pytest.raises(UserError, match="sha256"):
        load_lm(tampered)

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_lm_run / "model", pickled, ignore=shutil.ignore_patterns("*.safetensors", "modelcycle.json"))
    with pytest.raises(UserError, match="only safetensors"):
        load_lm(pickled)

    small = tmp_path / "small-vocab"
    shutil.copytree(tiny_lm_run / "model", small, ignore=shutil.ignore_patterns("modelcycle.json"))
    config = json.loads((small / "config.json").read_text())
    from tiny_lm import build_tokenizer

    tokenizer = build_tokenizer(vocab=700)  # a tokenizer with more tokens than the model has rows
    tokenizer.save_pretrained(small)
    assert len(tokenizer) > config["vocab_size"]
    with pytest.raises(UserError, match="does not belong to this model"):
        load_lm(small)

    assert not is_language_model(tmp_path / "nothing-here")
    with pytest.raises(UserError, match="no config.json"):
        load_lm(tmp_path / "nothing-here")
