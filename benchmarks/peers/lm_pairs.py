"""The data and start model of the DPO and SFT rows, and the same rows as TRL reads them.

The pydocs preference pairs and a small SFT policy made by the tests' recipes
(tests/lm_fixtures.py, as bench_lm_rlhf.py uses them): a byte-level BPE of 600 tokens and a
Llama of the ``tiny`` preset (hidden 128, 4 layers), fine-tuned on the pairs' good answers.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def policy_and_pairs(root: Path, sft_epochs: int) -> tuple[Path, Path]:
    """(the start policy's package, the folder of prefs-train.jsonl / prefs-val.jsonl), made once
    in ``root`` and shared by the rows that find them there."""
    sys.path.insert(0, str(REPO / "tests"))
    from lm_fixtures import build_sft_policy, write_prefs

    policy, prefs = root / "sft" / "sft" / "model", root / "prefs"
    if not (policy / "config.json").is_file():
        write_prefs(prefs)
        policy = build_sft_policy(root / "sft", prefs, epochs=sft_epochs, shape="{}")
    return policy, prefs


def trl_rows(path: Path, kind: str) -> list[dict]:
    """The pairs of ``path`` in TRL's conversational formats: ``preference`` (prompt, chosen,
    rejected) for DPO, ``completion`` (prompt, completion: the chosen answer) for SFT."""
    from modelcycle.data.formats import read_pairs

    def answer(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    pairs = read_pairs(path)
    if kind == "preference":
        return [{"prompt": p.messages, "chosen": answer(p.chosen), "rejected": answer(p.rejected)} for p in pairs]
    unique = {(p.prompt, p.chosen): p for p in pairs}.values()  # a prompt has several rejected answers
    return [{"prompt": p.messages, "completion": answer(p.chosen)} for p in unique]


def write_chats(path: Path, out: Path) -> int:
    """The SFT rows of ``path`` as chat ``messages`` JSONL (what `modelcycle lm sft` reads); their count."""
    import json

    rows = trl_rows(path, "completion")
    out.write_text("".join(json.dumps({"messages": r["prompt"] + r["completion"]}) + "\n" for r in rows))
    return len(rows)
