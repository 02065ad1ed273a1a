"""The pydocs language-model corpus: Python's own documentation (``pydoc_data.topics``, shipped
with CPython, so offline and free of licence questions) as pretraining text and as instruction
pairs in the chat format, so tokenizer -> pretrain -> SFT -> evaluate runs with no download.

The held-out split is by *topic*, not by paragraph: a held-out paragraph from a topic whose
neighbours trained would measure recall of that topic, not generalisation. Some topics repeat
others word for word (``compound`` holds ``if``, ``while`` ...; ``else`` is ``if``), so a
held-out paragraph that also appears in a training topic is dropped from the held-out side.

Instruction pairs come from each topic's title and from the section headings inside it
("Explain the for statement" -> the first sentences under that heading). Several phrasings per
heading give the model the idea that a question maps to the text under its heading.
"""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import numpy as np

from modelcycle.data.pydoc_topics import paragraphs
from modelcycle.data.pydocs_prefs import write_preference_pairs

VAL_TOPICS = 0.12  # share of topics held out
ANSWER_WORDS = 20  # answers end at the sentence that passes this many words: one or two sentences, short
# enough that a 1.3 M-parameter model learns where an answer ends (at 60 words its answers ran on)
PROMPTS = ("Explain {title}.", "What is {title}?", "Describe {title} in Python.", "Tell me about {title}.")
_SECTION = re.compile(r"^(?P<title>\S.*)\n(?P<rule>[=*\-~^]{3,})\s*$", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def topic_split(topics: list[str], val: float = VAL_TOPICS, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train topics, held-out topics), sorted; the same topics and seed give the same split."""
    names = sorted(topics)
    rng = np.random.default_rng(seed)
    held = {names[i] for i in rng.permutation(len(names))[: max(1, round(val * len(names)))]}
    return [t for t in names if t not in held], sorted(held)


def _title(heading: str) -> str:
    """'The "for" statement' -> 'the for statement'; 'Assignment statements' -> 'assignment statements'."""
    text = heading.replace('"', "").replace("“", "").replace("”", "").strip()
    return text[0].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) for the topic's title and each section heading inside it."""
    marks = list(_SECTION.finditer(text))
    return [
        (m["title"].strip(), text[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(text)])
        for i, m in enumerate(marks)
    ]


def answer(body: str) -> str | None:
    """The opening prose under a heading, cut at a sentence end after ANSWER_WORDS words; None
    when it opens with grammar rules or code (``::=``, indented blocks) rather than prose."""
    prose = [p for p in paragraphs(body, min_words=6) if "::=" not in p and not p.startswith(("*", ">>>"))]
    if not prose:
        return None
    words, kept = 0, []
    for sentence in _SENTENCE_END.split(" ".join(prose[:2])):
        kept.append(sentence)
        words += len(sentence.split())
        if words >= ANSWER_WORDS:
            break
    return " ".join(kept)


def instruction_pairs(topic: str, text: str) -> list[dict]:
    """Chat examples for one topic: every phrasing of every heading that has a prose answer."""
    out = []
    for heading, body in sections(text):
        reply = answer(body)
        if reply is None:
            continue
        for template in PROMPTS:
            prompt = template.format(title=_title(heading))
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
            out.append({"messages": messages, "topic": topic})
    return out


def instruction_split(topics: dict[str, str], val_topics: list[str]) -> dict[str, list[dict]]:
    """SFT's chat examples per split ("train", "val") from ``topics`` (help topic -> its text):
    each question once, and no held-out answer that a training topic also holds."""
    held_out = set(val_topics)
    pairs = {
        "train": [p for t in sorted(topics) if t not in held_out for p in instruction_pairs(t, topics[t])],
        "val": [p for t in sorted(held_out) for p in instruction_pairs(t, topics[t])],
    }
    for split in pairs:  # "compound" repeats "if", "while" ... with their headings: each question once
        pairs[split] = list({p["messages"][0]["content"]: p for p in reversed(pairs[split])}.values())[::-1]
    train_answers = {p["messages"][1]["content"] for p in pairs["train"]}
    pairs["val"] = [p for p in pairs["val"] if p["messages"][1]["content"] not in train_answers]
    return pairs


def write_pydocs(out: str | Path, val: float = VAL_TOPICS, seed: int = 0) -> dict:
    """Write ``corpus.txt``, ``corpus-val.txt`` (one paragraph a line, a blank line between
    topics: the documents), ``sft-train.jsonl``, ``sft-val.jsonl``, the preference pairs
    ``prefs-train.jsonl``, ``prefs-val.jsonl`` (same held-out topics) and ``source.json``;
    returns the counts."""
    from pydoc_data.topics import topics

    out = Path(out)
    train_topics, val_topics = topic_split(list(topics), val, seed)
    seen: set[str] = set()
    documents: dict[str, list[list[str]]] = {"train": [], "val": []}
    for split, names in (("train", train_topics), ("val", val_topics)):
        for topic in names:  # train first: a paragraph a training topic holds never counts as held out
            kept = [p for p in paragraphs(topics[topic], min_words=3) if p not in seen]
            seen.update(kept)
            if kept:
                documents[split].append(kept)
    pairs = instruction_split(topics, val_topics)
    out.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "corpus.txt"), ("val", "corpus-val.txt")):
        (out / name).write_text("\n\n".join("\n".join(doc) for doc in documents[split]) + "\n")
    for split in ("train", "val"):
        (out / f"sft-{split}.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs[split]))
    counts = {
        "topics": {"train": len(train_topics), "val": len(val_topics)},
        "paragraphs": {s: sum(map(len, d)) for s, d in documents.items()},
        "characters": {s: sum(len(p) for d in docs for p in d) for s, docs in documents.items()},
        "instructions": {s: len(p) for s, p in pairs.items()},
    }
    counts["preference_pairs"] = write_preference_pairs(out, pairs, seed)  # for `lm reward` / `lm dpo` / `lm ppo`
    source = {"source": "pydoc_data.topics", "python": platform.python_version(), "seed": seed, "val": val}
    source |= {"val_topics": val_topics, "counts": counts}
    (out / "source.json").write_text(json.dumps(source, indent=2) + "\n")
    return counts
