"""A tiny text classifier for the serving and export tests: the project's own text recipe
(``run.task=text_classify``) on pydoc-topics paragraphs, with all-MiniLM-L6-v2's architecture
shrunk to 2 layers of width 32 from random weights, so training takes seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TINY = "{pretrained: false, num_hidden_layers: 2, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64}"


def write_texts(root: Path) -> Path:
    """8 training and 2 validation paragraphs per topic group of pydoc-topics."""
    from modelcycle.data.pydoc_topics import corpus

    root.mkdir(parents=True, exist_ok=True)
    by_group: dict[str, list[dict]] = {}
    for record in corpus():
        by_group.setdefault(record["label"], []).append(record)
    for name, part in (("train", slice(0, 8)), ("val", slice(8, 10))):
        rows = [r for group in sorted(by_group) for r in by_group[group][part]]
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


_TRAINED: dict[str, Path] = {}  # run name -> the run trained for this test session


def train_text_classifier(root: Path, name: str = "topics") -> Path:
    """``root/runs/<name>``: a copy of the 1-epoch text classifier over :func:`write_texts`, whose
    texts are under ``root/texts``. It is trained once a session (in the first caller's ``root``,
    under ``original/``, which no caller gets) and copied for each caller, so a caller may write
    into its run (an export) without the others seeing it."""
    if name not in _TRAINED:
        _TRAINED[name] = _train_text_classifier(root / "original", name)
    original = _TRAINED[name]
    copy = root / "runs" / name
    shutil.copytree(original, copy)
    (root / "texts").symlink_to(original.parents[1] / "texts", target_is_directory=True)
    return copy


def _train_text_classifier(root: Path, name: str) -> Path:
    import modelcycle
    from modelcycle.config import load_config

    texts = write_texts(root / "texts")
    overrides = [
        "run.task=text_classify",
        f"data.root={texts}",
        f"run.dir={root / 'runs'}",
        f"run.name={name}",
        "model.name=all-MiniLM-L6-v2",
        f"model.args={TINY}",
        "data.max_length=32",
        "train.batch_size=8",
        "train.epochs=1",
        "train.warmup_epochs=0",
        "train.device=cpu",
    ]
    return modelcycle.train(load_config(None, overrides), progress=False).path
