"""The pydoc-topics demo corpus: paragraphs of Python's own reference documentation labelled with
the part of the language they describe, from ``pydoc_data.topics`` (shipped with CPython, so
it is offline and free of licence questions).

Each of the ~80 help topics (the text behind ``help("if")``) is mapped to one of five groups.
The groups follow the Language Reference's chapters, not keywords, so a paragraph is usually
placed by what it is about rather than by one telltale word: "the with statement" and "context
managers" are neighbours in meaning but sit in different groups (statements, data model), which
keeps the task learnable but not trivial.

Some topics repeat others (``compound`` holds ``if``, ``while`` ... word for word): a paragraph
found in two topics is kept once, and dropped if those topics belong to different groups, so no
text appears twice or under two labels. The split is stratified per group and seeded; the same
Python version and seed always give the same files (other Python versions have other docs).
"""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import numpy as np


def _topics(names: str) -> tuple[str, ...]:
    return tuple(names.split())


GROUPS: dict[str, tuple[str, ...]] = {
    "statements": _topics(
        "assert assignment async augassign break class compound continue del else for function if pass raise "
        "return try while with yield"
    ),
    "expressions": _topics(
        "atom-literals attribute-references await binary bitwise booleans calls comparisons conversions dict "
        "exprlists floating imaginary in integers lambda lists numbers operator-summary power shifting "
        "slicings strings subscriptions unary"
    ),
    "names-and-modules": _topics(
        "atom-identifiers dynamic-features exceptions execmodel global id-classes identifiers import naming nonlocal"
    ),
    "builtin-types": _topics(
        "bltin-code-objects bltin-ellipsis-object bltin-null-object bltin-type-objects formatstrings "
        "specialattrs string-methods truth types typesfunctions typesmapping typesmethods typesmodules "
        "typesseq typesseq-mutable"
    ),
    "data-model": _topics(
        "attribute-access callable-types context-managers customization numeric-types objects sequence-types "
        "specialnames"
    ),
}
# topics left out on purpose: "debugger" documents pdb, a tool, not the language
_RULE = re.compile(r"^\s*([*=\-~^\"'#+])\1{2,}\s*$")  # reST heading underlines


def paragraphs(text: str, min_words: int) -> list[str]:
    """Blank-line separated blocks, heading underlines removed, whitespace collapsed."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        kept = " ".join(line for line in block.splitlines() if not _RULE.match(line))
        paragraph = " ".join(kept.split())
        if len(paragraph.split()) >= min_words:
            out.append(paragraph)
    return out


def corpus(min_words: int = 10) -> list[dict[str, str]]:
    """Every usable paragraph as {"text", "label", "topic"}, in topic order, each text once."""
    from pydoc_data.topics import topics

    group_of = {topic: group for group, names in GROUPS.items() for topic in names}
    first: dict[str, tuple[str, str]] = {}
    groups: dict[str, set[str]] = {}
    for topic in sorted(t for t in topics if t in group_of):
        for paragraph in paragraphs(topics[topic], min_words):
            first.setdefault(paragraph, (topic, group_of[topic]))
            groups.setdefault(paragraph, set()).add(group_of[topic])
    return [
        {"text": text, "label": group, "topic": topic}
        for text, (topic, group) in first.items()
        if len(groups[text]) == 1
    ]


def write_pydoc_topics(out: str | Path, val: float = 0.2, seed: int = 0, min_words: int = 10) -> dict:
    """Write ``out/train.jsonl``, ``out/val.jsonl`` and ``out/source.json`` (how they were made);
    returns the counts per split and group."""
    out = Path(out)
    records = corpus(min_words)
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for group in sorted(GROUPS):
        members = [i for i, r in enumerate(records) if r["label"] == group]
        chosen.update(members[j] for j in rng.permutation(len(members))[: round(val * len(members))])
    splits = {
        "train": [r for i, r in enumerate(records) if i not in chosen],
        "val": [r for i, r in enumerate(records) if i in chosen],
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    counts = {name: {g: sum(r["label"] == g for r in rows) for g in sorted(GROUPS)} for name, rows in splits.items()}
    source = {
        "source": "pydoc_data.topics",
        "python": platform.python_version(),
        "groups": GROUPS,
        "min_words": min_words,
        "val": val,
        "seed": seed,
        "counts": counts,
    }
    (out / "source.json").write_text(json.dumps(source, indent=2) + "\n")
    return counts
