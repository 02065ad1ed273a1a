"""The data and start model of the DPO and SFT rows, and the same rows as TRL reads them.

The pydocs preference pairs and a small SFT policy made by the tests' recipes
(tests/lm_fixtures.py, as bench_lm_rlhf.py uses them): a byte-level BPE of 600 tokens and a
Llama of the ``tiny`` preset (hidden 128, 4 layers), fine-tuned on the pairs' good answers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import harness

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


def case_settings(task: str, policy: Path, prefs: Path, epochs: int, rows: int, extra: list[str], **shape) -> dict:
    """A DPO or SFT case: the modelcycle side's `modelcycle train` arguments (the recipe both sides
    share: ``shape`` holds max_length, lr, batch; a constant learning rate, no weight decay,
    clipping at 1.0 as TRL's defaults) and what both sides read."""
    args = [
        f"run.task={task}",
        f"model.init_from={policy}",
        f"lm.context_length={shape['max_length']}",
        f"train.lr={shape['lr']}",
        f"train.batch_size={shape['batch']}",
        f"train.epochs={epochs}",
        "train.schedule=none",
        "train.weight_decay=0",
        "train.clip_grad=1.0",
        *extra,
    ]
    what = f"{rows} {'pairs' if task == 'dpo' else 'chats'}, {epochs} epoch(s), batch {shape['batch']}, "
    what += f"{shape['max_length']} tokens, tiny Llama (hidden 128, 4 layers)"
    shared = {"policy": str(policy), "prefs": str(prefs), "epochs": epochs, "samples": rows * epochs}
    return {"cli_args": args, **shared, "what": what}


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


def trl_side(root: Path, config_class, trainer_class, kind: str, metric: str, **config) -> dict:
    """The TRL side of the DPO and SFT rows: ``trainer_class`` on the pairs as ``kind`` rows
    (``trl_rows``), from the same start policy, with the arguments every peer row shares, a
    constant learning rate and ``config``. TRL's own defaults of bf16 autocast and gradient
    checkpointing are switched off: the modelcycle side trains in float32 without recomputation,
    and the row compares the trainers, not those two switches."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    s = harness.settings(root)
    prefs, out = Path(s["prefs"]), root / "trl"
    set_seed(0)
    args = config_class(
        **harness.trainer_args(out),
        lr_scheduler_type="constant",
        num_train_epochs=s["epochs"],
        per_device_eval_batch_size=32,
        bf16=False,
        gradient_checkpointing=False,
        **config,
    )
    trainer = trainer_class(
        model=AutoModelForCausalLM.from_pretrained(s["policy"]),
        args=args,
        train_dataset=Dataset.from_list(trl_rows(prefs / "prefs-train.jsonl", kind)),
        eval_dataset=Dataset.from_list(trl_rows(prefs / "prefs-val.jsonl", kind)),
        processing_class=AutoTokenizer.from_pretrained(s["policy"]),
    )
    return harness.trainer_side(trainer, out, metric, s["samples"])
