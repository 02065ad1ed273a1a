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
MAX_LENGTH = 128
LR, BATCH = 1e-3, 16


def prepare(case: str, root: Path, quick: bool) -> dict:
    from lm_pairs import policy_and_pairs, write_chats

    policy, prefs = policy_and_pairs(root.parent / "lm-pairs", sft_epochs=1 if quick else 3)
    chats = write_chats(prefs / "prefs-train.jsonl", root / "sft-train.jsonl")
    write_chats(prefs / "prefs-val.jsonl", root / "sft-val.jsonl")
    epochs = 1 if quick else 3
    args = [
        "run.task=sft",
        f"model.init_from={policy}",
        f"lm.train_files=[{root / 'sft-train.jsonl'}]",
        f"lm.val_files=[{root / 'sft-val.jsonl'}]",
        f"lm.context_length={MAX_LENGTH}",
        "lm.eval_samples=0",
        f"train.lr={LR}",
        f"train.batch_size={BATCH}",
        f"train.epochs={epochs}",
        "train.schedule=none",
        "train.weight_decay=0",
        "train.clip_grad=1.0",
        "train.monitor=val_loss",
    ]
    return {
        "cli_args": args,
        "policy": str(policy),
        "prefs": str(prefs),
        "epochs": epochs,
        "samples": chats * epochs,
        "what": f"{chats} chats, {epochs} epoch(s), batch {BATCH}, {MAX_LENGTH} tokens, "
        "tiny Llama (hidden 128, 4 layers)",
    }


def modelcycle(case: str, root: Path) -> dict:
    s = harness.settings(root)
    epochs = harness.modelcycle_train(s["cli_args"], root / "runs" / "mc-sft")
    return {
        "samples": s["samples"],
        "seconds": sum(m["epoch_time_s"] for m in epochs),
        "quality": epochs[-1]["val_loss"],
    }


def peer(case: str, root: Path) -> dict:
    from datasets import Dataset
    from lm_pairs import trl_rows
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    s = harness.settings(root)
    prefs = Path(s["prefs"])
    set_seed(0)
    args = SFTConfig(
        output_dir=str(root / "trl-sft"),
        learning_rate=LR,
        lr_scheduler_type="constant",
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=32,
        num_train_epochs=s["epochs"],
        max_length=MAX_LENGTH,
        packing=False,
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
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(s["policy"]),
        args=args,
        train_dataset=Dataset.from_list(trl_rows(prefs / "prefs-train.jsonl", "completion")),
        eval_dataset=Dataset.from_list(trl_rows(prefs / "prefs-val.jsonl", "completion")),
        processing_class=AutoTokenizer.from_pretrained(s["policy"]),
        callbacks=[clock],
    )
    trainer.train()
    trainer.save_model(str(root / "trl-sft" / "model"))
    last_eval = [m for m in trainer.state.log_history if "eval_loss" in m][-1]
    return {"samples": s["samples"], "seconds": clock.seconds, "quality": last_eval["eval_loss"]}


if __name__ == "__main__":
    harness.child_main({"modelcycle": modelcycle, "peer": peer})
