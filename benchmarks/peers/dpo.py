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
MAX_LENGTH = 96
BETA, LR, BATCH = 0.1, 5e-4, 16


def prepare(case: str, root: Path, quick: bool) -> dict:
    from lm_pairs import policy_and_pairs

    policy, prefs = policy_and_pairs(root.parent / "lm-pairs", sft_epochs=1 if quick else 3)
    epochs = 1 if quick else 2
    pairs = len((prefs / "prefs-train.jsonl").read_text().splitlines())
    args = [
        "run.task=dpo",
        f"model.init_from={policy}",
        f"data.root={prefs}",
        f"lm.context_length={MAX_LENGTH}",
        f"dpo.beta={BETA}",
        f"train.lr={LR}",
        f"train.batch_size={BATCH}",
        f"train.epochs={epochs}",
        "train.schedule=none",
        "train.weight_decay=0",
        "train.clip_grad=1.0",
    ]
    return {
        "cli_args": args,
        "policy": str(policy),
        "prefs": str(prefs),
        "epochs": epochs,
        "samples": pairs * epochs,
        "what": f"{pairs} pairs, {epochs} epoch(s), batch {BATCH}, {MAX_LENGTH} tokens, "
        "tiny Llama (hidden 128, 4 layers)",
    }


def modelcycle(case: str, root: Path) -> dict:
    s = harness.settings(root)
    epochs = harness.modelcycle_train(s["cli_args"], root / "runs" / "mc-dpo")
    return {
        "samples": s["samples"],
        "seconds": sum(m["epoch_time_s"] for m in epochs),
        "quality": epochs[-1]["val_accuracy"],
    }


def peer(case: str, root: Path) -> dict:
    from datasets import Dataset
    from lm_pairs import trl_rows
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    s = harness.settings(root)
    prefs = Path(s["prefs"])
    set_seed(0)
    args = DPOConfig(
        output_dir=str(root / "trl-dpo"),
        beta=BETA,
        learning_rate=LR,
        lr_scheduler_type="constant",
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=32,
        num_train_epochs=s["epochs"],
        max_length=MAX_LENGTH,
        precompute_ref_log_probs=case == "dpo_precomputed",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        logging_strategy="epoch",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    clock = harness.trainer_clock()
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(s["policy"]),
        args=args,
        train_dataset=Dataset.from_list(trl_rows(prefs / "prefs-train.jsonl", "preference")),
        eval_dataset=Dataset.from_list(trl_rows(prefs / "prefs-val.jsonl", "preference")),
        processing_class=AutoTokenizer.from_pretrained(s["policy"]),
        callbacks=[clock],
    )
    trainer.train()
    trainer.save_model(str(root / "trl-dpo" / "model"))
    last_eval = [m for m in trainer.state.log_history if "eval_rewards/accuracies" in m][-1]
    return {"samples": s["samples"], "seconds": clock.seconds, "quality": last_eval["eval_rewards/accuracies"]}


if __name__ == "__main__":
    harness.child_main({"modelcycle": modelcycle, "peer": peer})
