"""Recipes for the language-model tests: a 2-layer, width-64 Llama on slices of pydocs, a size
that trains in seconds on two cores (the real recipes use the `tiny` preset)."""

from __future__ import annotations

import json
from pathlib import Path

SMALL = "{hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 2}"
CONTEXT = 128


def lm_overrides(pydocs: Path, tokenizer_dir: Path, runs: Path, name: str, *more: str) -> list[str]:
    return [
        "run.task=lm",
        f"run.dir={runs}",
        f"run.name={name}",
        "model.name=llama",
        f"model.args={SMALL}",
        f"lm.tokenizer={tokenizer_dir}",
        f"lm.context_length={CONTEXT}",
        f"lm.train_files=[{pydocs / 'small-corpus.txt'}]",
        f"lm.val_files=[{pydocs / 'corpus-val.txt'}]",
        "train.epochs=2",
        "train.batch_size=8",
        "train.lr=0.005",
        "train.warmup_epochs=0.1",
        "train.clip_grad=1.0",
        "train.device=cpu",
        "train.monitor=val_loss",
        "train.log_every=5",
        "eval.batch_size=32",
        *more,
    ]


def sft_overrides(pydocs: Path, base: Path, runs: Path, name: str, *more: str) -> list[str]:
    return [
        "run.task=sft",
        f"run.dir={runs}",
        f"run.name={name}",
        f"model.init_from={base}",
        f"lm.context_length={CONTEXT}",
        f"lm.train_files=[{pydocs / 'small-sft-train.jsonl'}]",
        f"lm.val_files=[{pydocs / 'small-sft-val.jsonl'}]",
        "lm.eval_samples=4",
        "lm.eval_tokens=24",
        "train.epochs=3",
        "train.batch_size=8",
        "train.lr=0.003",
        "train.warmup_epochs=0.1",
        "train.device=cpu",
        "train.monitor=val_loss",
        "train.log_every=5",
        *more,
    ]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
