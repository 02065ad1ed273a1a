"""Pretraining and SFT end to end on a small Llama: the packages load in transformers as they
are, pretraining beats an add-one bigram on held-out topics, SFT lowers the held-out answer
loss and makes the end-of-turn token likelier, LoRA trains adapters only and merges back (and
a bare adapter folder opens merged), a mismatched tokenizer is refused, and an interrupted run
resumes bit-identical."""

from __future__ import annotations

import json

import pytest
import torch
from lm_setup import lm_overrides, sft_overrides
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import modelcycle
from helpers import InterruptAt, run_cli
from modelcycle.api import merge_lora as merge
from modelcycle.config import load_config
from modelcycle.data.lm_data import IGNORE, chat_rows, encode_chats, read_conversations
from modelcycle.engine.trainer import TrainingInterrupted
from modelcycle.errors import ConfigError
from modelcycle.evaluation.lm import evaluate_lm
from modelcycle.lm.load import open_lm
from modelcycle.runs import read_manifest
from modelcycle.tasks import registry
from modelcycle.tasks.lm import next_token_sums


def test_pretraining_package_loads_in_transformers_and_beats_a_bigram(pretrained):
    model = AutoModelForCausalLM.from_pretrained(pretrained / "model")
    tok = AutoTokenizer.from_pretrained(pretrained / "model")
    ids = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    assert model.generation_config.eos_token_id == ids
    manifest = read_manifest(pretrained)
    assert (manifest["task"], manifest["backend"]) == ("lm", "transformers")
    result = evaluate_lm(pretrained)
    assert result["perplexity"] < result["bigram_perplexity"], result
    samples = [json.loads(line) for line in (pretrained / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {20, 40} and all(s["prompt"] == "The for statement" for s in samples)


def _end_of_turn_loss(model, tok, path) -> float:
    """Mean loss of the <|im_end|> that closes each held-out reference answer."""
    encoded = encode_chats(tok, read_conversations(path), 128)
    rows = chat_rows(encoded, 128, packing=False)
    total = count = 0.0
    with torch.no_grad():
        for row in rows:
            labels = torch.where(row["labels"] == tok.eos_token_id, row["labels"], IGNORE)
            loss, tokens = next_token_sums(model, {"input_ids": row["input_ids"][None], "labels": labels[None]})
            total, count = total + float(loss), count + int(tokens)
    return total / count


def test_sft_lowers_answer_loss_and_learns_to_end_the_turn(pretrained, fine_tuned, pydocs):
    held_out = pydocs / "small-sft-val.jsonl"
    tuned = evaluate_lm(fine_tuned)
    base = evaluate_lm(pretrained, data=held_out, samples=0, report=False)
    assert tuned["answer_loss"] < base["answer_loss"]
    assert len(tuned["samples"]) == 4 and all(s["prompt"] and "reference" in s for s in tuned["samples"])
    (sft_model, tok, _), (base_model, _, _) = open_lm(fine_tuned), open_lm(pretrained)
    assert _end_of_turn_loss(sft_model, tok, held_out) < _end_of_turn_loss(base_model, tok, held_out)


def test_evaluate_json_on_an_sft_run(fine_tuned):
    result = run_cli("evaluate", fine_tuned, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["answer_loss"] > 0 and out["perplexity"] > 1
    assert [set(s) >= {"prompt", "answer", "ended"} for s in out["samples"]] == [True] * 4


def test_lora_trains_adapters_only_and_merges_into_a_plain_package(pretrained, pydocs, tmp_path):
    overrides = sft_overrides(pydocs, pretrained, tmp_path / "runs", "lora", "lora.r=4", "train.epochs=1")
    run = modelcycle.train(load_config(None, overrides), progress=False).path
    tuning = read_manifest(run)["fine_tuning"]
    assert tuning["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert tuning["trainable"] < tuning["total"] / 10
    assert (run / "model" / "adapter" / "adapter_config.json").is_file()
    merged = merge(run, tmp_path / "merged")
    assert merged["fine_tuning"]["adapter"] is None
    a, b = load_file(run / "model" / "model.safetensors"), load_file(tmp_path / "merged" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    base = load_file(pretrained / "model" / "model.safetensors")
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(a["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # plain transformers, no peft
    # the adapter folder alone opens too: merged into the base its config names, with the base's tokenizer
    opened, tokenizer, _ = open_lm(run / "model" / "adapter")
    assert len(tokenizer) == opened.config.vocab_size
    assert all(torch.allclose(opened.state_dict()[k], a[k], atol=1e-6) for k in a)


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(pretrained, pydocs, other_tokenizer, tmp_path):
    overrides = sft_overrides(pydocs, pretrained, tmp_path / "runs", "mismatch", f"lm.tokenizer={other_tokenizer}")
    with pytest.raises(ConfigError, match="2,400 tokens but the model"):
        modelcycle.train(load_config(None, overrides), progress=False)


def test_a_sample_prompt_longer_than_the_context_is_refused_before_training(pydocs, tokenizer_dir, tmp_path):
    long = " ".join(["for"] * 200)  # 200 tokens at least: each " for" is one or more
    overrides = lm_overrides(
        pydocs, tokenizer_dir, tmp_path, "long", "lm.sample_every=5", f"lm.sample_prompts=[ok, {long}]"
    )
    with pytest.raises(ConfigError, match=r"lm.sample_prompts\[1\] is \d+ tokens.*lm.context_length=128"):
        modelcycle.train(load_config(None, overrides), progress=False)
    assert not (tmp_path / "long" / "samples.jsonl").exists()


def test_interrupted_pretraining_resumes_bit_identical(pydocs, tokenizer_dir, tmp_path):
    def config(name):
        return load_config(None, lm_overrides(pydocs, tokenizer_dir, tmp_path, name, "train.epochs=1"))

    straight = modelcycle.train(config("straight"), progress=False).path
    with pytest.raises(TrainingInterrupted):
        modelcycle.train(config("stopped"), progress=False, callbacks=[InterruptAt(7)])
    resumed = modelcycle.train(config("stopped"), progress=False, resume=True).path
    a, b = load_file(straight / "model" / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "resumed from step=7" in (resumed / "events.log").read_text()


def test_gates_command_reports_each_gate_and_fails_when_one_does(pretrained, fine_tuned):
    result = run_cli("lm", "gates", pretrained, fine_tuned, "--json")
    gates = json.loads(result.stdout)
    assert len(gates) == 3 and gates[0]["passed"] and gates[1]["passed"], gates
    assert result.returncode == (0 if all(g["passed"] for g in gates) else 1), result.stderr


def test_pretraining_on_two_processes_ends_where_one_process_does(pydocs, tokenizer_dir, tmp_path):
    """`modelcycle train --nproc 2` on an LM recipe (DDP, gloo): the global batch is the same, so
    the losses and the weights match a one-process run of the same recipe."""
    overrides = lm_overrides(pydocs, tokenizer_dir, tmp_path, "one", "train.epochs=1")
    one = modelcycle.train(load_config(None, overrides), progress=False).path
    two = [o.replace("run.name=one", "run.name=two") for o in overrides]
    result = run_cli("train", *two, "--nproc", "2", timeout=600)
    assert result.returncode == 0, result.stderr
    assert "processes=2 strategy=ddp backend=gloo" in (tmp_path / "two" / "events.log").read_text()
    ours, theirs = (
        json.loads((r / "model" / "modelcycle.json").read_text())["metrics"] for r in (tmp_path / "two", one)
    )
    assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)
    assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
    a, b = load_file(tmp_path / "two" / "model" / "model.safetensors"), load_file(one / "model" / "model.safetensors")
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_a_python_lm_run_gets_the_defaults_the_cli_gives(pydocs, tokenizer_dir, tmp_path):
    """run.task=lm from Python, with model.name and train.monitor left unset, trains the Llama the
    `lm pretrain` verb would (not the image default simple_cnn) and monitors val_loss; a value the
    caller sets still wins."""
    unset = ("model.name=", "train.monitor=")
    overrides = [
        o
        for o in lm_overrides(pydocs, tokenizer_dir, tmp_path, "defaults", "train.epochs=1")
        if not o.startswith(unset)
    ]
    run = modelcycle.train(modelcycle.load_config(None, overrides), progress=False)
    saved = load_config(run.path / "config.yaml")
    assert saved.model.name == "llama" and saved.train.monitor == "val_loss"
    manifest = read_manifest(run.path)
    assert manifest["architecture"]["name"] == "llama" and manifest["monitor"] == "val_loss"
    chosen = modelcycle.load_config(None, [*overrides, "train.monitor=train_loss"])
    assert registry.apply_defaults(chosen).train.monitor == "train_loss"
