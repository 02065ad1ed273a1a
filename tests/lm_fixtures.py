"""Builders for the RLHF tests: pydocs preference pairs, and a tiny "SFT policy" made by the
project's own recipes: ``lm.tokenizer.train_tokenizer`` on the good answers, then ``run.task=sft``
(through ``modelcycle.train``) of a 2-layer, width-64 Llama from scratch on (prompt, chosen).
No pretraining: the policy only has to know the answers' vocabulary, and the whole build takes
seconds on two cores.
"""

from __future__ import annotations

import json
from pathlib import Path

TRAIN_TOPICS = [
    *("for", "while", "if", "try", "with", "return", "import", "assert", "raise", "del", "pass", "break"),
    *("continue", "global", "nonlocal", "lambda", "integers", "floating", "strings", "lists", "dict", "calls"),
    *("comparisons", "booleans"),
]
VAL_TOPICS = ["yield", "class", "slicings", "shifting"]
MAX_LENGTH = 96  # lm.context_length of the preference runs
SMALL = "{hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4}"


def write_prefs(out: Path) -> Path:
    from pydoc_data.topics import topics

    from modelcycle.data.pydocs import instruction_split
    from modelcycle.data.pydocs_prefs import write_preference_pairs

    write_preference_pairs(out, instruction_split({t: topics[t] for t in TRAIN_TOPICS + VAL_TOPICS}, VAL_TOPICS))
    return out


def train_small_tokenizer(folder: Path, texts: list[str], vocab: int = 600):
    """``train_tokenizer`` on ``texts`` (written to ``folder/texts.txt``), saved in ``folder``."""
    from modelcycle.lm.tokenizer import train_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "texts.txt").write_text("\n\n".join(texts))
    return train_tokenizer([folder / "texts.txt"], vocab, folder)


def build_sft_policy(folder: Path, prefs: Path, epochs: int = 4, seed: int = 0, shape: str = SMALL) -> Path:
    """The tokenizer, then an SFT run on each distinct (prompt, chosen) of ``prefs``; returns the
    run's ``model/`` package (a Hugging Face causal-LM folder with its tokenizer). ``shape``:
    ``model.args`` over the ``tiny`` preset (``{}`` for the preset itself)."""
    import modelcycle
    from modelcycle.config import load_config
    from modelcycle.data.preferences import read_pairs

    pairs = read_pairs(prefs / "prefs-train.jsonl")
    train_small_tokenizer(folder / "tok", [p.chosen for p in pairs])
    chats = {(p.prompt, p.chosen): [*p.messages, {"role": "assistant", "content": p.chosen}] for p in pairs}
    sft = folder / "sft-train.jsonl"
    sft.write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats.values()))
    config = load_config(
        None,
        [
            "run.task=sft",
            "run.name=sft",
            f"run.dir={folder}",
            "model.name=llama",
            f"model.args={shape}",
            f"lm.tokenizer={folder / 'tok'}",
            "lm.context_length=128",
            f"lm.train_files=[{sft}]",
            "lm.eval_samples=0",
            f"train.epochs={epochs}",
            "train.batch_size=16",
            "train.lr=3e-3",
            "train.schedule=none",
            "train.device=cpu",
            "train.monitor=train_loss",
            f"train.seed={seed}",
        ],
    )
    return modelcycle.train(config, progress=False).model_dir


def ppo_overrides(tmp_path, prefs, sft_policy, reward, *more) -> list[str]:
    """A 3-iteration PPO run on the fixtures, small enough for a test; ``more`` overrides added."""
    return [
        f"run.dir={tmp_path / 'runs'}",
        f"policy={sft_policy}",
        f"reward={reward}",
        f"data.root={prefs}",
        "lm.context_length=96",
        "ppo.iterations=3",
        "ppo.rollout_batch=6",
        "ppo.minibatch=3",
        "ppo.update_epochs=2",
        "ppo.max_new_tokens=16",
        "ppo.checkpoint_every=1",
        "train.lr=1e-3",
        *more,
    ]
