"""The pydocs data (held out by topic, deterministic), the byte-level BPE tokenizer (loads with
AutoTokenizer, ChatML), the JSONL readers' errors, assistant-only labels and the `lora.` alias."""

from __future__ import annotations

import json

import pytest
from lm_setup import write_jsonl
from transformers import AutoTokenizer

from helpers import assert_mentions, assert_user_error, run_cli
from modelcycle.config import load_config
from modelcycle.data.lm_data import IGNORE, encode_chats, encode_conversation, read_conversations, read_documents
from modelcycle.data.pydocs import write_pydocs
from modelcycle.errors import DataError
from modelcycle.tasks.sft import chats

CHAT = [{"role": "user", "content": "Explain the for statement."}, {"role": "assistant", "content": "It loops."}]


def test_pydocs_holds_out_whole_topics_and_is_deterministic(pydocs, tmp_path):
    write_pydocs(tmp_path / "again")
    for name in ("corpus.txt", "corpus-val.txt", "sft-train.jsonl", "sft-val.jsonl"):
        assert (pydocs / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    source = json.loads((pydocs / "source.json").read_text())
    train_topics = {json.loads(line)["topic"] for line in (pydocs / "sft-train.jsonl").read_text().splitlines()}
    val_topics = {json.loads(line)["topic"] for line in (pydocs / "sft-val.jsonl").read_text().splitlines()}
    assert val_topics and val_topics <= set(source["val_topics"]) and not val_topics & train_topics
    train_text = set((pydocs / "corpus.txt").read_text().splitlines())
    held_out = [line for line in (pydocs / "corpus-val.txt").read_text().splitlines() if line]
    assert held_out and not train_text & set(held_out)
    for conversation in read_conversations(pydocs / "sft-train.jsonl"):
        assert [m["role"] for m in conversation] == ["user", "assistant"]


def test_tokenizer_loads_with_autotokenizer_and_renders_chatml(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(tok) == 2000
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|pad|>", "<|endoftext|>")
    text = tok.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nExplain the for statement.<|im_end|>\n<|im_start|>assistant\n"
    ids = tok("déjà vu — ünïcode", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "déjà vu — ünïcode"  # byte-level: no unknown token


def test_only_assistant_tokens_and_end_of_turn_are_trained_on(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids, labels = encode_conversation(tok, CHAT)
    trained = [i for i, y in zip(ids, labels, strict=True) if y != IGNORE]
    assert tok.decode(trained) == "It loops.<|im_end|>"
    assert tok.decode(ids) == tok.apply_chat_template(CHAT, tokenize=False)


def test_bad_jsonl_lines_are_named_with_file_and_line(tmp_path):
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"messages": CHAT},
            "{not json",
            {"prompt": "x"},
            {"messages": [{"role": "user", "content": "only a question"}]},
            {"instruction": "Add", "input": "1 and 2", "output": "3"},
        ],
    )
    with pytest.raises(DataError) as caught:
        read_conversations(bad)
    assert_mentions(str(caught.value), f"{bad}:2: not valid JSON", f"{bad}:3:", f"{bad}:4:", "no assistant turn")
    assert f"{bad}:5" not in str(caught.value) and f"{bad}:1" not in str(caught.value)
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Add", "input": "1 and 2", "output": "3"}])
    assert read_conversations(alpaca) == [
        [{"role": "user", "content": "Add\n\n1 and 2"}, {"role": "assistant", "content": "3"}]
    ]
    with pytest.raises(DataError, match=r"docs.jsonl:2"):
        read_documents(write_jsonl(tmp_path / "docs.jsonl", [{"text": "a document"}, {"body": "no text"}]))


def test_conversations_longer_than_the_context_are_cut_and_counted(tokenizer_dir, tmp_path, capsys):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    long = [{"role": "user", "content": "Explain."}, {"role": "assistant", "content": "words " * 200}]
    path = write_jsonl(tmp_path / "long.jsonl", [{"messages": CHAT}, {"messages": long}])
    encoded = chats([str(path)], tok, 32)
    assert encoded.truncated == 1 and all(len(ids) <= 32 for ids, _ in encoded.rows)
    assert_mentions(capsys.readouterr().err, "1 of 2 conversations are longer than lm.context_length=32")
    cut_early = encode_chats(tok, [long], 4)  # the cut leaves no assistant token: left out, counted
    assert (cut_early.truncated, cut_early.dropped, cut_early.rows) == (1, 1, [])


def test_top_level_lora_is_an_alias_of_model_lora(tmp_path):
    assert load_config(None, ["lora.r=8", "lora.alpha=32"]).model.lora.r == 8
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lora:\n  r: 4\n  target_modules: [q_proj]\n")
    lora = load_config(recipe).model.lora
    assert (lora.r, lora.target_modules) == (4, ["q_proj"])


def test_cli_writes_pydocs_and_a_tokenizer(tmp_path):
    data = run_cli("datasets", "pydocs", "--out", tmp_path / "pydocs")
    assert data.returncode == 0, data.stderr
    made = run_cli("lm", "tokenizer", tmp_path / "pydocs" / "corpus.txt", "--vocab", "300", "--out", tmp_path / "tok")
    assert made.returncode == 0, made.stderr
    assert AutoTokenizer.from_pretrained(tmp_path / "tok").eos_token == "<|im_end|>"
    assert_user_error(run_cli("lm", "tokenizer", tmp_path / "missing.txt", "--out", tmp_path / "t2"), "missing.txt")
