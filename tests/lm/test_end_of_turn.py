"""Issue 16, item 1: the end of an assistant turn comes from the model's chat template, not from
``eos_token``. Tiny random stand-ins of what users bring are built here at test time (no network):
a Qwen2 "base" (ChatML template, eos ``<|endoftext|>``), a Qwen2 "instruct" (eos ``<|im_end|>``,
saved in bf16) and a Llama with Llama-3's template (``<|eot_id|>`` closes turns, eos
``<|end_of_text|>``). Each gets a byte-level BPE trained with ``tokenizers`` on a few sentences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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

SENTENCES = [
    "The for statement iterates over the items of a sequence.",
    "A while loop repeats as long as its condition is true.",
    "Functions return a value with the return statement.",
    "You are a helpful assistant. What does it do? Say hi.",
]
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# name -> (architecture, special tokens, eos, pad, bos, template, dtype, the turn end expected)
STANDINS = {
    "qwen2-base": ("qwen2", QWEN_SPECIALS, "<|endoftext|>", "<|endoftext|>", None, QWEN_TEMPLATE, None, "<|im_end|>"),
    "qwen2-instruct": (
        *("qwen2", QWEN_SPECIALS, "<|im_end|>", "<|endoftext|>", None, QWEN_TEMPLATE, torch.bfloat16, "<|im_end|>"),
    ),
    "llama3": (
        *("llama", LLAMA_SPECIALS, "<|end_of_text|>", None, "<|begin_of_text|>", LLAMA3_TEMPLATE, None, "<|eot_id|>"),
    ),
}


def make_tokenizer(specials: list[str], eos: str, pad: str | None, bos: str | None, template: str | None):
    """A byte-level BPE trained on ``SENTENCES`` with ``specials``, as transformers wraps it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(SENTENCES * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token=eos,
        pad_token=pad,
        bos_token=bos,
        additional_special_tokens=[t for t in specials if t not in (eos, pad, bos)],
        chat_template=template,
        model_max_length=128,
    )


def make_model(kind: str, tokenizer, eos: str, seed: int = 0):
    """A random 2-layer, width-32 Qwen2 or Llama of ``tokenizer``'s vocabulary."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[
        kind
    ]
    eos_id = tokenizer.convert_tokens_to_ids(eos)
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, bos_token_id=tokenizer.bos_token_id)
    return model.eval()


def write_standin(name: str, folder: Path, template: str | None = "from STANDINS") -> Path:
    """The stand-in ``name`` as a downloaded Hugging Face folder (config, safetensors, tokenizer)."""
    kind, specials, eos, pad, bos, own_template, dtype, _ = STANDINS[name]
    tokenizer = make_tokenizer(specials, eos, pad, bos, own_template if template == "from STANDINS" else template)
    model = make_model(kind, tokenizer, eos)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings["unk_token"] = None  # as Qwen and Llama 3 ship it (Qwen2's class would make <|endoftext|> unk)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("standins")
    return {name: write_standin(name, root / name) for name in STANDINS}


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
