"""Tiny random stand-ins for the models users download (a Qwen2 with tied embeddings in bf16, a
Llama with its own head in float32), written as ``save_pretrained`` writes them, and a fake
Hugging Face cache laid out as huggingface_hub lays it out (``models--owner--name/blobs``,
``snapshots/COMMIT`` of symlinks, ``refs/main``), so Hub ids resolve with no network.

The tokenizers are ``tiny_lm.build_tokenizer``'s byte-level BPEs: the same size trained on
different amounts of text gives two tokenizers with the same special tokens and other merges.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

from tiny_lm import build_tokenizer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def write_source(folder: Path, tokenizer, arch: str = "qwen2", dtype: str = "bfloat16", tied: bool = True) -> Path:
    """A random causal LM over ``tokenizer`` saved with ``save_pretrained`` in ``dtype``, with a
    tokenizer_config.json naming its family's tokenizer class (as a downloaded Qwen's does)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    families = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}
    config_class, model_class = families[arch]
    config = config_class(
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,
        **SHAPE,
    )
    torch.manual_seed(0)
    model = model_class(config).to(getattr(torch, dtype)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings["tokenizer_class"] = {"qwen2": "Qwen2Tokenizer", "llama": "PreTrainedTokenizerFast"}[arch]
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    return folder


def tokenizers(vocab: int = 300):
    """(a tokenizer, another of the same size and special tokens trained on half the text)."""
    return build_tokenizer(vocab), build_tokenizer(vocab, chars=20_000)


def add_to_cache(cache: Path, repo: str, folder: Path, commit: str = COMMIT) -> Path:
    """``folder``'s files as the snapshot ``commit`` of ``repo`` in the hub cache ``cache``, the
    way huggingface_hub stores a download; returns the snapshot folder."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            continue
        data = path.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def forbid_network(monkeypatch) -> None:
    """Any attempt to open a connection fails the test (call it from an autouse fixture)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def safetensors_header(file: Path) -> dict:
    with open(file, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        return {k: v for k, v in json.loads(handle.read(size)).items() if k != "__metadata__"}


def write_chats(path: Path, count: int = 12) -> Path:
    topics = ["the for statement", "the with statement", "a list", "a dict", "the if statement", "a class"]
    rows = [
        {"messages": [{"role": "user", "content": f"Explain {t}."}, {"role": "assistant", "content": f"It is {t}."}]}
        for t in (topics * count)[:count]
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_overrides(source: str, runs: Path, chats: Path, name: str, *more: str) -> list[str]:
    """A 2-step SFT run of a tiny model, on the CPU."""
    return [
        "run.task=sft",
        f"run.dir={runs}",
        f"run.name={name}",
        f"model.name={source}",
        "lm.context_length=64",
        f"lm.train_files=[{chats}]",
        "lm.eval_samples=0",
        "train.epochs=1",
        "train.batch_size=6",
        "train.lr=0.001",
        "train.device=cpu",
        "train.monitor=train_loss",
        *more,
    ]
