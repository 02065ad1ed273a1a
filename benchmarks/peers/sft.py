"""SFT: `modelcycle train run.task=sft` against TRL's SFTTrainer.

Both fine-tune the same start policy (lm_pairs.py's) further on the same chats (each distinct
prompt of the pydocs preference pairs with its good answer), loss on the answer tokens only
(TRL: its prompt-completion format), with the same learning rate (constant), batch size,
epochs, seed, sequence limit and gradient clipping (TRL's default 1.0), no packing, evaluating
on the held-out chats after every epoch and writing a checkpoint per epoch and the final model.
Samples: chats trained on. Quality: the last validation loss on the held-out answers, each
side's own figure (mean cross-entropy per answer token).
"""

from __future__ import annotations

from pathlib import Path

import harness

PEER = "TRL SFTTrainer"
QUALITY = "val loss"
CASES = {"sft": "SFT"}
SHAPE = {"max_length": 128, "lr": 1e-3, "batch": 16}


def prepare(case: str, root: Path, quick: bool) -> dict:
    from lm_pairs import case_settings, policy_and_pairs, write_chats

    policy, prefs = policy_and_pairs(root.parent / "lm-pairs", sft_epochs=1 if quick else 3)
    chats = write_chats(prefs / "prefs-train.jsonl", root / "sft-train.jsonl")
    write_chats(prefs / "prefs-val.jsonl", root / "sft-val.jsonl")
    files = [f"lm.train_files=[{root / 'sft-train.jsonl'}]", f"lm.val_files=[{root / 'sft-val.jsonl'}]"]
    extra = [*files, "lm.eval_samples=0", "train.monitor=val_loss"]
    return case_settings("sft", policy, prefs, 1 if quick else 3, chats, extra, **SHAPE)


modelcycle = harness.modelcycle_training("val_loss")


def peer(case: str, root: Path) -> dict:
    from lm_pairs import trl_side
    from trl import SFTConfig, SFTTrainer

    config = {"learning_rate": SHAPE["lr"], "per_device_train_batch_size": SHAPE["batch"], "packing": False}
    config["max_length"] = SHAPE["max_length"]
    return trl_side(root, SFTConfig, SFTTrainer, "completion", "eval_loss", **config)


if __name__ == "__main__":
    harness.child_main({"modelcycle": modelcycle, "peer": peer})
