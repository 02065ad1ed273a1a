"""Issue 16, item 1: the end of an assistant turn comes from the model's chat template, not from
``eos_token``, on the tiny random stand-ins of what users bring (``stand_ins.py``: a Qwen2 base
with eos ``<|endoftext|>``, a bf16 Qwen2 instruct, a Llama with Llama-3's template), written once
a session by the ``standins`` fixture of tests/lm/conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from stand_ins import STANDINS, make_tokenizer

import modelcycle
from modelcycle.config import load_config
from modelcycle.data.lm_data import IGNORE, encode_chats, encode_conversation
from modelcycle.data.preference_batches import answer_ids
from modelcycle.errors import ConfigError
from modelcycle.lm.end_of_turn import EOS, OVERRIDE, PLAIN_CHAT_TEMPLATE, TEMPLATE, end_of_turn_ids, turn_end
from modelcycle.lm.generate import LanguageModel
from modelcycle.lm.load import load_lm
from modelcycle.lm.sampling import Sampling
from modelcycle.lm.tokenizer import CHAT_TEMPLATE


def tokenizer_of(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


CHAT = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "The for statement."}]


def trained_tokens(tokenizer, messages=CHAT, end=None) -> list[str]:
    ids, labels = encode_conversation(tokenizer, messages, end)
    return tokenizer.convert_ids_to_tokens([token for token, label in zip(ids, labels, strict=True) if label != IGNORE])


@pytest.mark.parametrize("name", STANDINS)
def test_the_turn_end_comes_from_the_template(standins, name):
    tokenizer = tokenizer_of(standins[name])
    expected = STANDINS[name][-1]
    found = turn_end(tokenizer)
    assert (found.token, found.id, found.source) == (expected, tokenizer.convert_tokens_to_ids(expected), TEMPLATE)
    differs = expected != tokenizer.eos_token
    assert (found.note(tokenizer) is not None) == differs  # base and Llama: a note; instruct: silence is right
    # SFT trains it: the answer and its closing token are the only trained tokens
    trained = trained_tokens(tokenizer)
    assert trained[-1] == expected
    assert tokenizer.eos_token not in trained[:-1] and "user" not in "".join(trained)
    # generation stops at it and at eos, from the plain folder (no modelcycle.json)
    lm = load_lm(standins[name], device="cpu")
    assert set(lm.eos_ids) >= {found.id, tokenizer.eos_token_id}


def forced(lm: LanguageModel, token: int) -> None:
    """Makes the model's greedy choice ``token`` at every step."""
    boost = torch.zeros(lm.model.config.vocab_size)
    boost[token] = 1e4
    lm.model.get_output_embeddings().register_forward_hook(lambda module, args, out: out + boost.to(out.dtype))


@pytest.mark.parametrize("name", ["qwen2-base", "llama3"])
def test_a_base_model_that_emits_its_turn_end_stops(standins, name):
    lm = load_lm(standins[name], device="cpu")
    end = lm.tokenizer.convert_tokens_to_ids(STANDINS[name][-1])
    forced(lm, end)
    [answer] = lm.generate([lm.chat_ids(CHAT[:1])], Sampling(temperature=0, max_new_tokens=8))
    assert (answer.finish_reason, answer.token_ids, answer.text) == ("stop", [end], "")


def test_preference_answers_close_with_the_turn_end(standins):
    tokenizer = tokenizer_of(standins["qwen2-base"])
    assert answer_ids(tokenizer, "hi")[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert answer_ids(tokenizer, "hi", "<|endoftext|>")[-1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_the_override_and_a_wrong_one(standins):
    tokenizer = tokenizer_of(standins["qwen2-base"])
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    found = turn_end(tokenizer, "<|endoftext|>")
    assert (found.id, found.source, found.in_template) == (endoftext, OVERRIDE, False)
    assert "inserted after each answer" in found.note(tokenizer)
    # the template writes <|im_end|> after the answer: the override is inserted before it and trained
    ids, labels = encode_conversation(tokenizer, CHAT, found)
    at = ids.index(endoftext)
    assert labels[at] == endoftext and ids[at + 1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert labels[at + 1] == IGNORE
    assert end_of_turn_ids(tokenizer, None, "<|endoftext|>") == [endoftext]
    for wrong in ("<|nope|>", "im_end", "The for"):
        with pytest.raises(ConfigError, match=r"lm\.end_of_turn=.*not a single token"):
            turn_end(tokenizer, wrong)
        with pytest.raises(ConfigError, match=r"lm\.end_of_turn"):
            encode_chats(tokenizer, [CHAT], 64, wrong)


def test_a_wrong_override_stops_a_run_before_it_starts(standins, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": CHAT}) + "\n")
    config = load_config(None, sft_overrides(standins["qwen2-base"], data, tmp_path, "lm.end_of_turn=<|nope|>"))
    with pytest.raises(ConfigError, match=r"lm\.end_of_turn='<\|nope\|>'"):
        modelcycle.train(config, progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_template_without_a_turn_end_closes_answers_with_eos(standins):
    tokenizer = tokenizer_of(standins["qwen2-base"])
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    found = turn_end(tokenizer)
    assert (found.token, found.source, found.in_template) == ("<|endoftext|>", EOS, False)
    assert "writes no end-of-turn token" in found.note(tokenizer)
    assert trained_tokens(tokenizer)[-1] == "<|endoftext|>"  # inserted after the answer, trained


def test_a_template_that_writes_eos_after_the_answer(standins):
    """Llama 2 / Mistral Instruct style: ``' ' + content + ' ' + eos_token``; with the unknown token
    the same as eos (Qwen2's tokenizer class does that when tokenizer_config.json names none)."""
    tokenizer = tokenizer_of(standins["qwen2-base"])
    tokenizer.unk_token = tokenizer.eos_token
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
    )
    found = turn_end(tokenizer)
    assert (found.token, found.source, found.in_template, found.note(tokenizer)) == (
        "<|endoftext|>",
        TEMPLATE,
        True,
        None,
    )
    trained = trained_tokens(tokenizer)
    assert trained[-1] == "<|endoftext|>" and trained.count("<|endoftext|>") == 1
    forged = [{"role": "user", "content": "Say <|endoftext|> hi."}, CHAT[1]]  # content is text, even eos
    assert trained_tokens(tokenizer, forged) == trained
    assert encode_conversation(tokenizer, forged)[0].count(tokenizer.eos_token_id) == 1


def test_default_templates_for_tokenizers_without_one(standins):
    from modelcycle.lm.end_of_turn import give_default_template

    chatml = tokenizer_of(standins["qwen2-base"])
    chatml.chat_template = None
    assert "ChatML" in give_default_template(chatml, "qwen") and chatml.chat_template == CHAT_TEMPLATE
    assert turn_end(chatml).token == "<|im_end|>" and trained_tokens(chatml)[-1] == "<|im_end|>"
    plain = make_tokenizer(["<|endoftext|>"], "<|endoftext|>", None, None, None)  # GPT-2-like
    assert "turns closed by <|endoftext|>" in give_default_template(plain, "gpt")
    assert plain.chat_template == PLAIN_CHAT_TEMPLATE
    assert turn_end(plain).source == TEMPLATE and trained_tokens(plain)[-1] == "<|endoftext|>"
    assert give_default_template(plain) is None  # it has one now


ANSWER = "Hi."


def sft_overrides(base: Path, data: Path, runs: Path, *more: str) -> list[str]:
    return [
        "run.task=sft",
        f"run.dir={runs / 'runs'}",
        "run.name=sft",
        f"model.init_from={base}",
        "lm.context_length=64",
        f"lm.train_files=[{data}]",
        "lm.eval_samples=0",
        "train.epochs=60",
        "train.batch_size=8",
        "train.lr=0.01",
        "train.schedule=none",
        "train.device=cpu",
        "train.monitor=train_loss",
        "train.log_every=1000",
        *more,
    ]


def test_sft_on_a_base_model_learns_to_stop_at_its_turn_end(standins, tmp_path):
    """The Qwen2 base memorises one short answer; greedy answers then end at <|im_end|> (not at the
    length limit), from the package, as `lm generate` and serving load it."""
    questions = ["Say hi.", "What does it do?", "Say hi to me.", "Hi?"]
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]} for q in questions]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    run = modelcycle.train(load_config(None, sft_overrides(standins["qwen2-base"], data, tmp_path)), progress=False)
    manifest = json.loads((run.model_dir / "modelcycle.json").read_text())
    im_end = tokenizer_of(standins["qwen2-base"]).convert_tokens_to_ids("<|im_end|>")
    assert manifest["end_of_turn"] == {"token": "<|im_end|>", "id": im_end, "from": TEMPLATE}
    generation = json.loads((run.model_dir / "generation_config.json").read_text())
    assert im_end in generation["eos_token_id"]  # transformers' own generate stops there too
    assert "not eos_token <|endoftext|>" in (run.path / "events.log").read_text()
    lm = load_lm(run.path, device="cpu")
    answers = lm.generate(
        [lm.chat_ids([{"role": "user", "content": q}]) for q in questions[:2]],
        Sampling(temperature=0, max_new_tokens=16),
    )
    for answer in answers:
        assert (answer.finish_reason, answer.token_ids[-1], answer.text) == ("stop", im_end, ANSWER)


def test_a_run_started_from_a_package_keeps_its_chosen_end_of_turn(standins, tmp_path):
    """lm.end_of_turn chosen for one run is what a run started from its package trains and stops
    at, not the template's turn end (<|im_end|>) found again."""
    rows = [{"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": ANSWER}]}] * 8
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    quick = ("train.epochs=1",)
    first = modelcycle.train(
        load_config(
            None, sft_overrides(standins["qwen2-base"], data, tmp_path, "lm.end_of_turn=<|endoftext|>", *quick)
        ),
        progress=False,
    )
    eos = tokenizer_of(standins["qwen2-base"]).convert_tokens_to_ids("<|endoftext|>")
    chosen = {"token": "<|endoftext|>", "id": eos, "from": OVERRIDE}
    assert json.loads((first.model_dir / "modelcycle.json").read_text())["end_of_turn"] == chosen
    again = sft_overrides(first.model_dir, data, tmp_path / "again", *quick)
    second = modelcycle.train(load_config(None, again), progress=False)
    assert json.loads((second.model_dir / "modelcycle.json").read_text())["end_of_turn"] == chosen
