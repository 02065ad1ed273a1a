"""DPO: `modelcycle train run.task=dpo` against TRL's DPOTrainer, by default (the reference model
run in every step) and with ``precompute_ref_log_probs=True``.

Both start from the same SFT policy (lm_pairs.py) on the same pydocs preference pairs, with the
sigmoid loss, the same beta, learning rate (constant), batch size, epochs, seed, sequence limit
and gradient clipping (TRL's default 1.0), validating on the held-out pairs after every epoch and
writing a checkpoint per epoch and the final model. The modelcycle side runs its default: the
reference's log-probabilities computed once before training. Samples: preference pairs trained
on. Quality: the last validation's reward accuracy (the share of held-out pairs whose chosen
answer gets the larger implicit reward), each side's own figure.
"""

from __future__ import annotations

from pathlib import Path

import harness

PEER = "TRL DPOTrainer"
QUALITY = "val reward acc."
CASES = {"dpo": "DPO (TRL default)", "dpo_precomputed": "DPO (TRL precomputed ref.)"}
SHAPE = {"max_length": 96, "lr": 5e-4, "batch": 16}
BETA = 0.1


def prepare(case: str, root: Path, quick: bool) -> dict:
    from lm_pairs import case_settings, policy_and_pairs

    policy, prefs = policy_and_pairs(root.parent / "lm-pairs", sft_epochs=1 if quick else 3)
    pairs = len((prefs / "prefs-train.jsonl").read_text().splitlines())
    extra = [f"data.root={prefs}", f"dpo.beta={BETA}"]
    return case_settings("dpo", policy, prefs, 1 if quick else 2, pairs, extra, **SHAPE)


modelcycle = harness.modelcycle_training("val_accuracy")


def peer(case: str, root: Path) -> dict:
    from lm_pairs import trl_side
    from trl import DPOConfig, DPOTrainer

    config = {"learning_rate": SHAPE["lr"], "per_device_train_batch_size": SHAPE["batch"], "beta": BETA}
    config.update(max_length=SHAPE["max_length"], precompute_ref_log_probs=case == "dpo_precomputed")
    return trl_side(root, DPOConfig, DPOTrainer, "preference", "eval_rewards/accuracies", **config)


if __name__ == "__main__":
    harness.child_main({"modelcycle": modelcycle, "peer": peer})
