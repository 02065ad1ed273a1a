"""The reward model (``run.task=reward``, ``modelcycle lm reward``): a scalar score for a prompt
and an answer, learned from preference pairs with the Bradley–Terry loss.

The model is ``AutoModelForSequenceClassification`` with one output: on a causal LM (our SFT
run, a Llama or Qwen folder) transformers adds a linear ``score`` head that reads the hidden state
of the last real token, the end-of-turn token that closes the answer; a sequence-classification
folder works as it is. Both rows of a pair run in one forward pass. The package is that model in
the Hugging Face layout, so ``AutoModelForSequenceClassification`` loads it and ``serve`` hosts it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from modelcycle.config import Config, DataSection
from modelcycle.data.preference_batches import answer_ids, encode_pairs, fit, pair_loader, prompt_ids
from modelcycle.data.preferences import open_pairs, pair_sources
from modelcycle.engine import distributed
from modelcycle.errors import ConfigError
from modelcycle.progress import info
from modelcycle.tasks.plugin import TEXT_MODEL_KEYS, TaskPlugin, parts_of
from modelcycle.tasks.preference_loss import bradley_terry_loss

METRICS = ("loss", "accuracy", "margin")


class RewardTask:
    """Sums: the loss, pairs ranked right (chosen scored higher), the score gap, pairs."""

    metric_names = {"train": METRICS, "val": METRICS}

    def __init__(self, margin_scale: float = 1.0):
        self.margin_scale = margin_scale

    def _pairs(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()
        chosen, rejected = scores.chunk(2)
        losses = bradley_terry_loss(
            chosen, rejected, self.margin_scale * batch["margin"] if self.margin_scale else None
        )
        return losses, chosen, rejected

    def _sums(self, losses, chosen, rejected) -> dict[str, torch.Tensor]:
        return {
            "loss": losses.detach().sum(),
            "correct": (chosen > rejected).sum().float(),
            "margin": (chosen - rejected).detach().sum(),
            "count": torch.tensor(float(len(chosen)), device=chosen.device),
        }

    def training_step(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses, chosen, rejected = self._pairs(model, batch)
        return losses.mean(), self._sums(losses, chosen, rejected)

    def validation_step(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return self._sums(*self._pairs(model, batch))

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("count", 0.0), 1.0)
        return {"loss": sums["loss"] / n, "accuracy": sums["correct"] / n, "margin": sums["margin"] / n}


@dataclass
class PairSetup:
    """What ``api.train`` needs from a preference task (reward, dpo)."""

    task: object
    model: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader | None
    meta: dict
    write_package: Callable[[Path, dict, dict], Path]
    notes: list[str] = field(default_factory=list)  # for events.log and the terminal


def pair_length(config: Config) -> int:
    """Tokens per (prompt + answer) row of the preference tasks (reward, DPO, PPO): ``lm.context_length``,
    as for every language-model task. ``data.max_length`` belongs to text classification; a value
    set there that disagrees would be silently ignored, so it is refused."""
    default = DataSection.model_fields["max_length"].default
    given, length = config.data.max_length, config.lm.context_length
    if given not in (default, length):
        raise ConfigError(
            f"data.max_length={given}: run.task={config.run.task} reads lm.context_length (now {length}) for "
            f"prompt + answer tokens, like every language-model task; set lm.context_length={given} instead"
        )
    return length


def preference_loaders(config: Config, tokenizer, end: str | None = None) -> tuple[DataLoader, DataLoader | None, dict]:
    """Loaders over the preference pairs (``data.root``'s prefs-train/prefs-val files, or
    ``data.train_files`` / ``data.val_files``) and the package's preprocessing record. ``end``: the
    token that closes each answer (DPO's policy's; None for reward models: the template's)."""
    data = config.data
    train, val = open_pairs(data.root, data.train_files, data.val_files)
    t, max_length = config.train, pair_length(config)
    world = distributed.world_size()
    distributed.split_batch(t.batch_size, world)
    shard = {"rank": distributed.rank(), "world": world, "seed": t.seed}
    train_loader = pair_loader(encode_pairs(train, tokenizer, max_length, end), tokenizer, t.batch_size, True, **shard)
    val_loader = (
        pair_loader(encode_pairs(val, tokenizer, max_length, end), tokenizer, config.eval.batch_size, False, **shard)
        if val
        else None
    )
    record = {
        "max_length": max_length,
        "format": "the tokenizer's chat template up to the assistant turn, then the answer and its end-of-turn token",
        "data_root": str(Path(data.root).resolve()) if data.root else None,
        # the held-out sources `modelcycle evaluate` reads
        "val_files": [str(Path(f).resolve()) for f in pair_sources(data.root, data.train_files, data.val_files)[1]],
        "pairs": {"train": len(train), "val": len(val or [])},
    }
    return train_loader, val_loader, record


def setup(config: Config) -> PairSetup:
    from modelcycle.models.text import apply_tuning, build_text_model, package_writer, tuning_line

    cfg = config.model
    source = cfg.init_from or cfg.name
    torch.manual_seed(config.train.seed)
    model, tokenizer, architecture = build_text_model(
        cfg.model_copy(update={"name": source, "init_from": None}), ["reward"], pair_length(config)
    )
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"{source}: the tokenizer has no padding token, so a batch of pairs cannot be padded")
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last token that is not padding
    model, tuning = apply_tuning(model, cfg)
    info(f"reward model on {source}: {tuning_line(tuning)}")
    train_loader, val_loader, preprocessing = preference_loaders(config, tokenizer)
    meta = {
        "task": "reward",
        "backend": "transformers",
        "layout": "transformers",
        "architecture": architecture,
        "preprocessing": preprocessing,
        "fine_tuning": {**tuning, "merged": tuning["lora"] is not None},
    }
    return PairSetup(
        RewardTask(config.reward.margin_scale), model, train_loader, val_loader, meta, package_writer(model, tokenizer)
    )


@torch.no_grad()
def reward_scores(
    model: nn.Module,
    tokenizer,
    prompts: list[list[dict[str, str]]],
    answers: list[str],
    max_length: int,
    batch_size: int = 32,
) -> torch.Tensor:
    """The reward model's score of each (prompt, answer), texts tokenised with the reward
    model's own tokenizer: a policy with another tokenizer is scored on its text."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(answers), batch_size):
        rows = []
        for prompt, answer in zip(
            prompts[start : start + batch_size], answers[start : start + batch_size], strict=True
        ):
            head, (tail,) = fit(prompt_ids(tokenizer, prompt), [answer_ids(tokenizer, answer)], max_length)
            rows.append(head + tail)
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        out.append(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


PLUGIN = TaskPlugin(
    name="reward",
    setup=lambda config, ctx: parts_of(setup(config)),
    evaluate="reward_model",
    summary_metrics=("val_accuracy", "val_margin", "val_loss"),
    view="pairs",
    package_kind="hf_sequence_classifier",
    serve_protocols=("score",),
    model_from=("model.init_from",),  # a causal LM (an SFT run) to put a score head on, instead of model.name
    # a sequence classifier (model.*) over the pairs of data.root or data.train_files/val_files cut to
    # lm.context_length; data.max_length only to refuse a value that disagrees with it (pair_length)
    reads=(
        *("reward", "data.root", "data.train_files", "data.val_files", "data.max_length", *TEXT_MODEL_KEYS),
        "lm.context_length",
    ),
    description="a reward model: a scalar score for (prompt, answer) from preference pairs",
)
