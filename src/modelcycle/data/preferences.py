"""Preference pairs: records that say which of two answers to a prompt is better.

The formats (data/record_formats.py, read by data/formats.py from JSONL, JSON arrays, Parquet or
``datasets.save_to_disk`` folders, mixed freely):

* TRL's ``{"prompt", "chosen", "rejected"}`` with strings (the prompt is one user turn) or
  message lists ``{"role": "user"|"assistant"|"system"|"tool", "content": "..."}``, or
  ``{"chosen": [...], "rejected": [...]}`` alone where both are whole conversations (the implicit
  prompt). Either way the answer is the last message of ``chosen`` / ``rejected`` (it must be the
  assistant's) and everything before it is the context, which must be the same on both sides:
  otherwise the pair compares two conversations, not two answers;
* ShareGPT pairs ``{"conversations": [...], "chosen": {"from": "gpt", "value": ...}, "rejected": ...}``
  and Alpaca pairs ``{"instruction", "input", "chosen", "rejected"}`` (LLaMA-Factory's).

An optional number ``"margin"`` says how much better ``chosen`` is (for the reward model's
margin loss) and an optional string ``"kind"`` labels the pair for accuracy by kind; other
keys (ids, sources) are ignored. Every record is checked before anything trains and all problems
are reported with file and line at once. A pair whose two answers are the same text teaches
nothing and would only add ``log 2`` to every loss: such pairs are counted and skipped with a
warning rather than refused, as real preference sets carry a few.

The pairs come from ``data.root``, a folder holding ``prefs-train.jsonl`` and (optional)
``prefs-val.jsonl``, or from ``data.train_files`` and ``data.val_files``, lists of files or
folders as ``lm.train_files`` is for SFT.
"""

from __future__ import annotations

from pathlib import Path

from modelcycle.data.formats import PAIRS, read_pairs
from modelcycle.data.record_formats import Pair
from modelcycle.errors import ConfigError, DataError

__all__ = ["Pair", "read_pairs", "open_pairs", "pair_sources", "unique_prompts", "TRAIN_FILE", "VAL_FILE"]

TRAIN_FILE, VAL_FILE = "prefs-train.jsonl", "prefs-val.jsonl"


def pair_sources(root: str | None, train_files: list[str], val_files: list[str]) -> tuple[list[str], list[str]]:
    """The train and held-out sources: ``data.root``'s two files, or the file lists."""
    if root and (train_files or val_files):
        raise ConfigError(
            "set data.root (a folder with prefs-train.jsonl and prefs-val.jsonl) or data.train_files and "
            "data.val_files, not both"
        )
    if not root:
        if val_files and not train_files:
            raise ConfigError("data.val_files is set but data.train_files is empty; list the training pairs too")
        return list(train_files), list(val_files)
    folder = Path(root)
    if not (folder / TRAIN_FILE).is_file():
        raise DataError(
            f"{folder} has no {TRAIN_FILE}; data.root is a folder holding {TRAIN_FILE} and {VAL_FILE} "
            f"(or list files or folders in data.train_files and data.val_files; {PAIRS.formats}); "
            "`modelcycle datasets pydocs --out data/pydocs` writes one"
        )
    return [str(folder / TRAIN_FILE)], [str(folder / VAL_FILE)] if (folder / VAL_FILE).is_file() else []


def open_pairs(
    root: str | Path | None, train_files: list[str] = (), val_files: list[str] = ()
) -> tuple[list[Pair], list[Pair] | None]:
    """The train pairs and the held-out ones (None when there are none), from ``data.root`` or
    the file lists."""
    train, val = pair_sources(str(root) if root else None, list(train_files), list(val_files))
    if not train:
        raise ConfigError(
            "data.root is not set, nor data.train_files; pass data.root=PATH to a folder with prefs-train.jsonl "
            "and prefs-val.jsonl (`modelcycle datasets pydocs --out data/pydocs` writes one), or list files or "
            "folders of preference pairs in data.train_files (and data.val_files)"
        )
    pairs = [p for source in train for p in read_pairs(source)]
    return pairs, [p for source in val for p in read_pairs(source)] if val else None


def unique_prompts(pairs: list[Pair]) -> list[list[dict[str, str]]]:
    """Each distinct prompt once, in file order: the prompts a policy answers in PPO and evaluation."""
    seen: dict[tuple, None] = {}
    for pair in pairs:
        seen.setdefault(pair.prompt, None)
    return [[{"role": r, "content": c} for r, c in prompt] for prompt in seen]
