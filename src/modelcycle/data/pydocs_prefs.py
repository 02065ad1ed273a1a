"""Preference pairs from Python's own documentation, for the reward model, DPO and PPO demos.

For each paragraph of a help topic the prompt asks about the topic, ``chosen`` is the paragraph
and ``rejected`` is one of two worse answers, alternating:

* ``wrong_topic``: a paragraph of another topic (from another group of
  :data:`modelcycle.data.pydoc_topics.GROUPS` where the topic has one), fluent but off the question;
* ``shuffled``: the same paragraph with its words in random order, on topic but degraded.

The split is by topic (``val_topics``), so held-out pairs ask about topics never seen in
training, and wrong-topic answers are drawn from the same split, so no training text leaks into
the held-out pairs. Each line records its ``kind`` and ``topic`` (ignored by the reader) so that
accuracy can be broken down by them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from modelcycle.data.preferences import TRAIN_FILE, VAL_FILE
from modelcycle.data.pydoc_topics import GROUPS, paragraphs

KINDS = ("wrong_topic", "shuffled")
GROUP_OF = {topic: group for group, names in GROUPS.items() for topic in names}


def prompt_for(topic: str) -> str:
    return f"Explain `{topic}` in Python."


def write_preference_pairs(
    out: str | Path, topics: dict[str, str], val_topics: Iterable[str], seed: int = 0, min_words: int = 10
) -> dict[str, dict[str, int]]:
    """Write ``out/prefs-train.jsonl`` and ``out/prefs-val.jsonl`` from ``topics`` (help topic ->
    its text, as in ``pydoc_data.topics``); returns the pair counts per split and kind."""
    out = Path(out)
    held_out = set(val_topics)
    rng = np.random.default_rng(seed)
    counts = {}
    out.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", TRAIN_FILE), ("val", VAL_FILE)):
        chosen = {
            t: paragraphs(text, min_words) for t, text in sorted(topics.items()) if (t in held_out) == (split == "val")
        }
        chosen = {t: ps for t, ps in chosen.items() if ps}
        rows = list(_pairs(chosen, rng))
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        counts[split] = {kind: sum(r["kind"] == kind for r in rows) for kind in KINDS}
    return counts


def _pairs(by_topic: dict[str, list[str]], rng: np.random.Generator) -> Iterable[dict]:
    topics = list(by_topic)
    n = 0
    for topic, passages in by_topic.items():
        others = [t for t in topics if t != topic and GROUP_OF.get(t, t) != GROUP_OF.get(topic, topic)]
        others = others or [t for t in topics if t != topic]
        for passage in passages:
            kind = KINDS[n % len(KINDS)] if others else "shuffled"
            if kind == "wrong_topic":
                other = others[rng.integers(len(others))]
                rejected = by_topic[other][rng.integers(len(by_topic[other]))]
            else:
                rejected = _shuffled(passage, rng)
            if rejected == passage:
                continue
            n += 1
            yield {"prompt": prompt_for(topic), "chosen": passage, "rejected": rejected, "kind": kind, "topic": topic}


def _shuffled(passage: str, rng: np.random.Generator) -> str:
    words = passage.split()
    return " ".join(words[i] for i in rng.permutation(len(words)))
