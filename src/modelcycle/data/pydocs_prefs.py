"""Preference pairs from Python's own documentation, for the reward model, DPO and PPO demos.

They are built from the very (heading, answer) units the SFT stage learned
(:func:`modelcycle.data.pydocs.instruction_pairs`): the prompt is one of SFT's phrasings of a
heading question ("Explain the for statement.", "What is the for statement?" ...), ``chosen`` is
that heading's answer, so the SFT model that the reward model and DPO start from already knows the
prompts and the good answers, and every phrasing of every heading gets two worse answers:

* ``wrong_topic``: the answer of another heading (from another group of
  :data:`modelcycle.data.pydoc_topics.GROUPS` where the split has one), fluent but off the
  question: ranking it below the right answer needs reading the question;
* ``shuffled``: the chosen answer with its words in random order, on topic but degraded.

The split is SFT's (by topic), so held-out pairs ask about topics never seen in training, and
wrong-topic answers are drawn from the same split, so no training text leaks into the held-out
pairs. Each line records its ``kind`` (which `evaluate` breaks accuracy down by) and ``topic``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from modelcycle.data.preferences import TRAIN_FILE, VAL_FILE
from modelcycle.data.pydoc_topics import GROUPS

KINDS = ("wrong_topic", "shuffled")
GROUP_OF = {topic: group for group, names in GROUPS.items() for topic in names}


def write_preference_pairs(out: str | Path, instructions: dict[str, list[dict]], seed: int = 0) -> dict[str, dict]:
    """Write ``out/prefs-train.jsonl`` and ``out/prefs-val.jsonl`` from SFT's chat examples per
    split (``{"train": [...], "val": [...]}``, each ``{"messages": [user, assistant], "topic"}``);
    returns the pair counts per split and kind."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    counts = {}
    out.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", TRAIN_FILE), ("val", VAL_FILE)):
        rows = list(_pairs(_units(instructions.get(split, [])), rng))
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        counts[split] = {kind: sum(r["kind"] == kind for r in rows) for kind in KINDS}
    return counts


def _units(examples: list[dict]) -> dict[str, tuple[str, list[str]]]:
    """answer -> (its topic, the prompts SFT asks for it), in file order."""
    units: dict[str, tuple[str, list[str]]] = {}
    for example in examples:
        (question, reply) = (m["content"] for m in example["messages"])
        units.setdefault(reply, (example["topic"], []))[1].append(question)
    return units


def _pairs(units: dict[str, tuple[str, list[str]]], rng: np.random.Generator):
    answers = list(units)
    for chosen, (topic, prompts) in units.items():
        others = [a for a in answers if GROUP_OF.get(units[a][0], units[a][0]) != GROUP_OF.get(topic, topic)]
        others = others or [a for a in answers if a != chosen]
        for prompt in prompts:
            row = {"prompt": prompt, "chosen": chosen, "topic": topic}
            if others:
                yield {**row, "rejected": others[rng.integers(len(others))], "kind": "wrong_topic"}
            shuffled = _shuffled(chosen, rng)
            if shuffled != chosen:
                yield {**row, "rejected": shuffled, "kind": "shuffled"}


def _shuffled(passage: str, rng: np.random.Generator) -> str:
    words = passage.split()
    return " ".join(words[i] for i in rng.permutation(len(words)))
