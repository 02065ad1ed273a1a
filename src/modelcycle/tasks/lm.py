"""Causal language-model pretraining (run.task=lm): next-token loss on packed sequences, and the
pieces SFT shares (tasks/sft.py): the step, the model with its tokenizer, sample generations.

The loss is summed over predicted tokens and divided by their count, so perplexity
(``exp(loss)``) is per token whatever the batch holds, and SFT's padding and prompt tokens
(label -100) count for nothing. Labels are shifted rather than logits, which saves copying the
``[batch, length, vocab]`` logits once per step (transformers' own loss does the same).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from modelcycle.config import Config
from modelcycle.data.lm_data import IGNORE, lm_loader, pack, packed_rows, token_stream
from modelcycle.engine import distributed
from modelcycle.engine.callbacks import Callback, ProgressDisplay, publish
from modelcycle.errors import ConfigError
from modelcycle.lm.chat_template import ChatTemplateError, chat_ids, encode_text
from modelcycle.lm.end_of_turn import TurnEnd, give_default_template, inherited_override, turn_end
from modelcycle.lm.generate import LanguageModel
from modelcycle.lm.load import check_tokenizer, lm_folder, open_lm
from modelcycle.lm.model import build_lm, lora_targets, package_writer
from modelcycle.lm.sampling import Sampling
from modelcycle.models import hub
from modelcycle.models.hf_files import save_dtype
from modelcycle.progress import info
from modelcycle.tasks.plugin import TEXT_MODEL_KEYS, TaskPlugin, parts_of


def next_token_sums(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss over predicted tokens, their count)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    target = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)  # position t predicts token t + 1
    loss = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, (target != IGNORE).sum()


class NextTokenTask:
    metric_names = {"train": ("loss", "perplexity"), "val": ("loss", "perplexity")}

    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, tokens = next_token_sums(model, batch)
        loss = total / tokens.clamp(min=1)
        return loss, {"loss": total.detach(), "tokens": tokens, "count": torch.tensor(len(batch["input_ids"]))}

    def validation_step(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        total, tokens = next_token_sums(model, batch)
        return {"loss": total, "tokens": tokens}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        loss = sums["loss"] / max(sums.get("tokens", 0.0), 1.0)
        out = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if "count" in sums:
            out["tokens"] = sums["tokens"]
        return out


@dataclass
class LMSetup:
    task: NextTokenTask
    model: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader | None
    meta: dict  # the package's modelcycle.json, less what training adds
    write_package: Callable[[Path, dict, dict], Path]
    callbacks: list[Callback] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for events.log and the terminal


@dataclass
class LMModel:
    model: nn.Module  # a peft wrapper with LoRA
    tokenizer: object
    record: dict  # the package's "architecture" entry
    tuning: dict
    base: Path | None  # the folder the weights started from
    save_dtype: torch.dtype | None  # lm.save_dtype; None: each tensor's dtype in base
    end_of_turn: TurnEnd | None = None  # what closes an answer (trained, and generation stops there)
    notes: list[str] = field(default_factory=list)  # what was chosen for the model, for events.log

    def meta(self) -> dict:
        """What every language-model package records of the model (``modelcycle.json``)."""
        return {"end_of_turn": self.end_of_turn.record() if self.end_of_turn else None}


def prepare_model(config: Config, chat: bool = False) -> LMModel:
    """The model a language-model run trains: built from ``lm.size`` (model.name=llama), or
    loaded from ``model.init_from`` / a folder in ``model.name``; LoRA applied as configured.
    ``chat``: the run trains on conversations (a tokenizer without a chat template gets the
    default one, and a turn that cannot end is refused)."""
    from modelcycle.lm.tokenizer import load_tokenizer
    from modelcycle.models.text import apply_tuning, tuning_line

    cfg, lm = config.model, config.lm
    if cfg.freeze != "none":
        raise ConfigError(f"model.freeze={cfg.freeze}: language-model runs train every weight, or LoRA adapters only")
    torch.manual_seed(config.train.seed)
    if cfg.name is None and not cfg.init_from:
        raise ConfigError(
            "model.init_from is not set: name the model this run starts from (a run folder, a package, a Hugging "
            "Face model folder or a Hub id in the local cache), or set model.name=llama to build one from lm.size"
        )
    source = cfg.init_from or (None if cfg.name == "llama" else cfg.name)
    source_manifest = None  # the package the run starts from, when it is one of ours
    if source is None:
        if not lm.tokenizer:
            raise ConfigError(
                "lm.tokenizer is not set: a model built from scratch (model.name=llama) needs a tokenizer folder; "
                "make one with `modelcycle lm tokenizer data/pydocs/corpus.txt --vocab 4000 --out runs/tok`"
            )
        tokenizer = load_tokenizer(lm.tokenizer)
        model, record = build_lm(lm.size, tokenizer, lm.context_length, dict(cfg.args))
        tokenizer_source, tokenizer_revision = hub.recorded(lm.tokenizer)  # a Hub id as itself, not the cache's path
        record |= {"name": "llama", "tokenizer": tokenizer_source, "tokenizer_revision": tokenizer_revision}
        base = None
    else:
        if cfg.args:
            raise ConfigError("model.args: a model loaded from a folder keeps its architecture; drop model.args")
        base = lm_folder(source)
        model, own, source_manifest = open_lm(base)
        model.train()
        tokenizer = own
        if lm.tokenizer:
            tokenizer = load_tokenizer(lm.tokenizer)
            check_tokenizer(model, tokenizer, own, base, lm.tokenizer, lm.tokenizer_mismatch_ok)
        record = {"name": str(source), "folder": str(base.resolve()), "revision": hub.snapshot_commit(base)}
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and lm.context_length > limit:
        raise ConfigError(
            f"lm.context_length={lm.context_length}, but the model reads at most {limit} tokens; lower it"
        )
    record |= {
        # what the package's config.json says the model is (save_pretrained writes the class it saves)
        "model_type": model.config.model_type,
        "architectures": [type(model).__name__],
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    # a run started from a package whose run chose its turn end by lm.end_of_turn keeps that choice
    override = lm.end_of_turn or inherited_override(source_manifest)
    end, notes = answer_end(model, tokenizer, override, chat, record["name"])
    given = list(cfg.lora.target_modules) if "target_modules" in cfg.lora.model_fields_set else None
    targets = lora_targets(model, given) if cfg.lora.r else None
    model, tuning = apply_tuning(model, cfg, task_type="CAUSAL_LM", targets=targets)
    info(f"{record['name']} ({record['parameters']:,} parameters): {tuning_line(tuning)}")
    return LMModel(model, tokenizer, record, tuning, base, save_dtype(lm.save_dtype), end, notes)


def answer_end(model: nn.Module, tokenizer, override: str | None, chat: bool, name: str) -> tuple[TurnEnd | None, list]:
    """The token that closes an answer (``lm.end_of_turn``, else the chat template's, else eos) and
    notes on it; it joins the model's ``generation_config`` eos ids, so the package stops there in
    ``transformers``' own ``generate`` too."""
    notes = []
    if chat and (note := give_default_template(tokenizer, name)):
        notes.append(note)
    try:
        end = turn_end(tokenizer, override, name)
    except ChatTemplateError:
        if chat:
            raise
        end = None  # pretraining does not render chats; generating from the package says what fails
    if end is None:
        if chat:
            raise ConfigError(
                f"{name}: the tokenizer has no eos_token and its chat template closes no answer with a token, so "
                "the model could not learn where an answer ends; set lm.end_of_turn to a token of its vocabulary"
            )
        return None, notes
    if chat and (note := end.note(tokenizer, name)):
        notes.append(note)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        current = generation.eos_token_id
        current = list(current) if isinstance(current, list) else [] if current is None else [current]
        if end.id not in current:
            generation.eos_token_id = [end.id, *current]
    return end, notes


def package_meta(config: Config, built: LMModel, task: str) -> dict:
    lm = config.lm
    return {
        "task": task,
        "backend": "transformers",
        "layout": "transformers",  # config.json + model.safetensors + generation_config.json + tokenizer files
        "architecture": built.record,
        "lm": {"context_length": lm.context_length, "train_files": lm.train_files, "val_files": lm.val_files},
        "fine_tuning": {**built.tuning, "adapter": "adapter/" if built.tuning["lora"] else None},
        "init_from": str(built.base.resolve()) if built.base else None,
        **built.meta(),
    }


def check_files(config: Config) -> None:
    if not config.lm.train_files:
        example = "data/pydocs/sft-train.jsonl" if config.run.task == "sft" else "data/pydocs/corpus.txt"
        raise ConfigError(
            f"lm.train_files is empty; list the training data, e.g. lm.train_files=[{example}] "
            "(`modelcycle datasets pydocs --out data/pydocs` writes it)"
        )
    if config.train.monitor.startswith("val_") and not config.lm.val_files:
        raise ConfigError(f"train.monitor={config.train.monitor} needs lm.val_files; or set train.monitor=train_loss")


def language_setup(config: Config, task: str, rows: Callable[[list[str], object, bool], list[dict]]) -> LMSetup:
    """What pretraining and SFT share around their data: the model, the sharded loaders of
    ``rows(files, tokenizer, train, end)`` (``end``: the end-of-turn token prepare_model chose), the
    package and the sample log (chat prompts for SFT)."""
    check_files(config)
    built = prepare_model(config, chat=task != "lm")
    t, lm, tokenizer = config.train, config.lm, built.tokenizer
    world = distributed.world_size()
    distributed.split_batch(t.batch_size, world)
    shard = {"rank": distributed.rank(), "world": world, "seed": t.seed}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    end = built.end_of_turn.token if built.end_of_turn else None
    train_loader = lm_loader(rows(lm.train_files, tokenizer, True, end), pad, t.batch_size, train=True, **shard)
    val_loader = None
    if lm.val_files:
        val = rows(lm.val_files, tokenizer, False, end)
        val_loader = lm_loader(val, pad, config.eval.batch_size, train=False, **shard)
    return LMSetup(
        NextTokenTask(),
        built.model,
        train_loader,
        val_loader,
        package_meta(config, built, task),
        package_writer(built.model, tokenizer, built.base, built.save_dtype),
        sample_callbacks(config, tokenizer, chat=task != "lm", end=end),
        built.notes,
    )


def setup(config: Config) -> LMSetup:
    """Packed token sequences, model and task for a pretraining run."""
    length = config.lm.context_length

    def rows(files: list[str], tokenizer, train: bool, end: str | None) -> list[dict]:
        packed = pack(token_stream(files, tokenizer), length, ", ".join(files))
        if train:
            info(f"pretraining on {packed.numel():,} tokens ({len(packed):,} sequences of {length})")
        return packed_rows(packed)

    return language_setup(config, "lm", rows)


def sample_callbacks(config: Config, tokenizer, chat: bool, end: str | None = None) -> list[Callback]:
    lm = config.lm
    if not (lm.sample_every and lm.sample_prompts):
        return []
    prompts = []
    for i, prompt in enumerate(lm.sample_prompts):
        if chat:  # the prompt as a user message, its text never parsed for control tokens
            ids = chat_ids(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
        else:
            ids = encode_text(tokenizer, prompt, add_special_tokens=True)
        if len(ids) >= lm.context_length:
            raise ConfigError(
                f"lm.sample_prompts[{i}] is {len(ids)} tokens{' as a chat turn' if chat else ''}, which leaves no "
                f"room for an answer within lm.context_length={lm.context_length}; shorten it"
            )
        prompts.append(ids)
    return [SampleLog(lm.sample_every, list(lm.sample_prompts), prompts, tokenizer, lm.sample_tokens, end)]


class SampleLog(Callback):
    """Greedy continuations of fixed prompts every ``every`` steps, to ``samples.jsonl`` and the
    terminal: the quickest way to see whether a language model is learning anything. Greedy
    decoding draws no random numbers, so logging samples leaves a resumed run exact."""

    def __init__(
        self, every: int, shown: list[str], prompts: list[list[int]], tokenizer, tokens: int, end: str | None = None
    ):
        self.every, self.shown, self.prompts, self.tokenizer, self.end = every, shown, prompts, tokenizer, end
        self.sampling = Sampling(temperature=0, max_new_tokens=tokens)

    def on_step_end(self, trainer) -> None:
        step = trainer.state.step
        if step % self.every or not distributed.is_main():
            return
        was_training = trainer.model.training  # LanguageModel switches the model to eval mode
        try:
            lm = LanguageModel(trainer.model, self.tokenizer, end_of_turn=self.end)
            answers = lm.generate(self.prompts, self.sampling)
        finally:
            trainer.model.train(was_training)
        lines = [
            {"step": step, "prompt": p, "text": a.text, "ended": a.finish_reason == "stop"}
            for p, a in zip(self.shown, answers, strict=True)
        ]
        if trainer.run_dir is not None:
            with open(trainer.run_dir / "samples.jsonl", "a") as handle:
                handle.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        for line in lines:
            trainer.event(f"sample step={step}: {line['prompt']!r} -> {line['text']!r}")
        publish(trainer, "samples", lambda: _markdown(lines))
        if any(isinstance(cb, ProgressDisplay) for cb in trainer.callbacks):  # progress=False: quiet
            for line in lines:
                info(f"  step {step}: {line['prompt']} -> {' '.join(line['text'].split())[:120]}")


def _markdown(lines: list[dict]) -> str:
    """Samples as TensorBoard's text tab shows them: a markdown table, one prompt a row."""
    rows = [" | ".join(" ".join(str(v).split()).replace("|", "\\|") for v in (s["prompt"], s["text"])) for s in lines]
    return "\n".join(["prompt | continuation", "--- | ---", *rows])


# What a causal-LM plugin declares (lm, and sft on the same model and package); the defaults are
# what `modelcycle lm pretrain` and a Python run.task=lm both start from, under the recipe
LM_PLUGIN_FIELDS = {
    "evaluate": "language_model",
    "defaults": {"model": {"name": "llama"}, "train": {"monitor": "val_loss"}},
    "summary_metrics": ("val_loss", "val_perplexity"),
    "view": "language_model",
    "package_kind": "hf_causal_lm",
    "serve_protocols": ("openai",),
    # no data.*: the text comes from lm.train_files / lm.val_files. lm.packing is SFT's choice;
    # pretraining always packs, so the one value that differs from the default is what lm does
    "reads": (*TEXT_MODEL_KEYS, "lm"),
    "model_from": ("model.init_from",),  # a run, package, folder or Hub id to start from: no model.name=llama
}

PLUGIN = TaskPlugin(
    name="lm",
    setup=lambda config, ctx: parts_of(setup(config)),
    **LM_PLUGIN_FIELDS,
    opens_foreign=("hf_causal_lm",),  # a downloaded causal LM folder (Qwen, Llama) is evaluated as a language model
    description="causal language-model pretraining on packed text",
)
