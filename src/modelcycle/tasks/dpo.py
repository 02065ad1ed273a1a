"""Direct preference optimisation (``run.task=dpo``, ``modelcycle lm dpo``): the policy learns
from preference pairs with no reward model and no sampling (the losses: tasks/preference_loss.py).

The reference is the model the run starts from (or ``dpo.reference``), frozen. It sees the same
fixed pairs every epoch, so with ``dpo.cache_reference`` (the default) its log-probabilities are
computed once before training, kept per pair, and the reference model is dropped: each step then
runs one model instead of two. ``cache_reference=false`` keeps the reference and runs it every
step (the benchmark's baseline). The reference-free losses (simpo, orpo) load no reference.

Logged: the loss, the implicit reward accuracy (the share of pairs whose chosen answer gets the
higher implicit reward ``β log π/ρ``), the mean reward margin and both mean rewards.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from modelcycle.config import Config, DPOSection
from modelcycle.engine import distributed
from modelcycle.engine.trainer import to_device
from modelcycle.errors import ConfigError
from modelcycle.lm.load import open_lm
from modelcycle.lm.model import package_writer
from modelcycle.progress import info, progress_bar
from modelcycle.tasks.lm import prepare_model
from modelcycle.tasks.plugin import TEXT_MODEL_KEYS, TaskPlugin, parts_of
from modelcycle.tasks.preference_loss import REFERENCE_FREE, PairLogps, dpo_loss, response_logps
from modelcycle.tasks.reward import PairSetup, preference_loaders

METRICS = ("loss", "accuracy", "margin", "chosen_reward", "rejected_reward")


def pair_logps(model: nn.Module, batch: dict) -> PairLogps:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = response_logps(logits, batch["input_ids"], batch["response_mask"])
    (chosen, rejected), (n_chosen, n_rejected) = total.chunk(2), count.chunk(2)
    return PairLogps(chosen, rejected, n_chosen, n_rejected)


class DPOTask:
    metric_names = {"train": METRICS, "val": METRICS}

    def __init__(self, cfg: DPOSection, reference: nn.Module | None):
        self.cfg, self.reference = cfg, reference
        self.cache: dict[str, torch.Tensor] = {}  # split -> (N, 2) summed log-probabilities (chosen, rejected)

    def cache_reference(self, loaders: dict[str, DataLoader | None], device: torch.device) -> None:
        """Reference log-probabilities of every pair, once; then the reference model is dropped."""
        model = self.reference.to(device).eval()
        for split, loader in loaders.items():
            if loader is None:
                continue
            table = torch.zeros(len(loader.dataset), 2)
            plain = DataLoader(loader.dataset, batch_size=loader.batch_size or 16, collate_fn=loader.collate_fn)
            with torch.no_grad(), progress_bar(f"reference log-probs ({split})", len(plain)) as advance:
                for batch in plain:
                    batch = to_device(batch, device)
                    logps = pair_logps(model, batch)
                    table[batch["index"].cpu()] = torch.stack([logps.chosen, logps.rejected], 1).float().cpu()
                    advance()
            self.cache[split] = table
        self.reference = None

    def _reference(self, batch: dict, split: str, policy: PairLogps) -> PairLogps | None:
        if self.cfg.loss in REFERENCE_FREE:
            return None
        if self.cache:
            rows = self.cache[split].to(policy.chosen.device)[batch["index"]]
            return PairLogps(rows[:, 0], rows[:, 1], policy.chosen_tokens, policy.rejected_tokens)
        model = self.reference.to(batch["input_ids"].device).eval()
        with torch.no_grad():
            return pair_logps(model, batch)

    def _step(self, model: nn.Module, batch: dict, split: str):
        policy = pair_logps(model, batch)
        cfg = self.cfg
        out = dpo_loss(
            cfg.loss, policy, self._reference(batch, split, policy), cfg.beta, cfg.label_smoothing, cfg.simpo_gamma
        )
        sums = {
            "loss": out.losses.detach().sum(),
            "correct": (out.chosen_rewards > out.rejected_rewards).sum().float(),
            "margin": (out.chosen_rewards - out.rejected_rewards).sum(),
            "chosen_reward": out.chosen_rewards.sum(),
            "rejected_reward": out.rejected_rewards.sum(),
            "count": torch.tensor(float(len(out.losses)), device=out.losses.device),
        }
        return out.losses.mean(), sums

    def training_step(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self._step(model, batch, "train")

    def validation_step(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return self._step(model, batch, "val")[1]

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("count", 0.0), 1.0)
        out = {key: sums[key] / n for key in ("loss", "margin", "chosen_reward", "rejected_reward")}
        return {**out, "accuracy": sums["correct"] / n}


def setup(config: Config) -> PairSetup:
    built = prepare_model(config, chat=True)
    tokenizer, cfg = built.tokenizer, config.dpo
    end = built.end_of_turn.token if built.end_of_turn else None  # lm.end_of_turn, or the policy's inherited one
    train_loader, val_loader, preprocessing = preference_loaders(config, tokenizer, end)
    reference = None
    if cfg.loss not in REFERENCE_FREE:
        reference, ref_tokenizer, _ = open_lm(cfg.reference or built.base)
        if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ConfigError(
                f"dpo.reference={cfg.reference}: its tokenizer differs from the policy's, so their log-probabilities "
                "are over different tokens; use a reference trained with the same tokenizer"
            )
        reference.requires_grad_(False)
    task = DPOTask(cfg, reference)
    if reference is not None and cfg.cache_reference:
        task.cache_reference(
            {"train": train_loader, "val": val_loader}, distributed.resolve_device(config.train.device)
        )
        info("reference log-probabilities cached; the reference model is no longer needed")
    meta = {
        "task": "dpo",
        "backend": "transformers",
        "layout": "transformers",
        "architecture": built.record,
        "preprocessing": preprocessing,
        "dpo": cfg.model_dump(mode="json"),
        "fine_tuning": {**built.tuning, "merged": built.tuning["lora"] is not None},
        "init_from": str(built.base.resolve()) if built.base else None,
        **built.meta(),
    }
    writer = package_writer(built.model, tokenizer, built.base, built.save_dtype)
    return PairSetup(task, built.model, train_loader, val_loader, meta, writer, built.notes)


PLUGIN = TaskPlugin(
    name="dpo",
    setup=lambda config, ctx: parts_of(setup(config)),
    evaluate="language_model",
    summary_metrics=("val_accuracy", "val_margin", "val_loss"),
    capabilities=frozenset({"chat"}),
    view="language_model",
    package_kind="hf_causal_lm",
    serve_protocols=("openai",),
    model_from=("model.init_from",),  # the policy it starts from (an SFT run); model.name=llama builds one
    # the policy as tasks/lm.prepare_model builds it (model.*, lm.tokenizer, lm.size, lm.context_length),
    # the pairs of data.root or data.train_files/val_files (data.max_length only to refuse a disagreeing
    # value), and what `modelcycle evaluate` reads of the run (lm.val_files, lm.eval_*); not lm.train_files
    # nor lm.sample_*
    reads=(
        *("dpo", "data.root", "data.train_files", "data.val_files", "data.max_length", *TEXT_MODEL_KEYS),
        *("lm.tokenizer", "lm.size", "lm.context_length", "lm.val_files", "lm.eval_samples", "lm.eval_tokens"),
        *("lm.end_of_turn", "lm.save_dtype", "lm.tokenizer_mismatch_ok"),
    ),
    description="direct preference optimisation of a policy on preference pairs",
)
