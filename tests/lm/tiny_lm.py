"""The tiny random chat model of the generation, chat and serving tests (and of
``benchmarks/bench_lm_generate.py``), made with the project's own recipes: the tokenizer from
``modelcycle.lm.tokenizer.train_tokenizer`` on Python's own docs (``pydoc_data.topics``), the
model from ``modelcycle.lm.model.build_lm``; the fixture writes it with the project's package
writer.

Random weights are enough: greedy decoding is deterministic, and a wide initialisation
(``initializer_range=0.2``) keeps the logits far apart so cached and uncached decoding pick the
same tokens.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_tokenizer(vocab: int = 600, chars: int = 40_000):
    """A byte-level BPE of ``vocab`` tokens trained on the first ``chars`` characters of the
    interpreter's own documentation; kept in memory (its training folder is deleted)."""
    from pydoc_data.topics import topics

    from modelcycle.lm.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "topics.txt"
        text.write_text("\n\n".join(topics[k] for k in sorted(topics))[:chars])
        return train_tokenizer([text], vocab, Path(tmp) / "tokenizer")


def build_model(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, context: int = 128, seed: int = 0):
    """A random Llama of ``build_lm``'s layout, in eval mode."""
    import torch

    from modelcycle.lm.model import build_lm

    shape = {
        "hidden_size": hidden,
        "intermediate_size": hidden * 3,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads // 2,  # grouped-query attention, as in Llama 3 and Qwen
        "initializer_range": 0.2,
    }
    torch.manual_seed(seed)
    model, _ = build_lm("tiny", tokenizer, context, shape)
    return model.eval()


def write_run(run: Path) -> Path:
    """``run`` as a run folder whose ``model/`` is the tiny chat model's LM package (task sft),
    written by the project's package writer; served under the run folder's name."""
    from modelcycle.lm.model import package_writer

    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    manifest = {"task": "sft", "backend": "transformers", "metrics": {}, "source_run": str(run)}
    package_writer(model, tokenizer, None)(run / "model", model.state_dict(), manifest)
    (run / "config.yaml").write_text(f"run:\n  name: {run.name}\n")
    return run
