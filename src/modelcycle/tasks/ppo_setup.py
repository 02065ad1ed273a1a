"""PPO for language models (``run.task=ppo``, ``modelcycle lm ppo``; Ouyang et al. 2022 / Ziegler et al. 2019).

Each iteration: sample answers to a batch of prompts from the policy (rollout), score them with
the frozen reward model (scoring), then take ``ppo.update_epochs`` passes of clipped policy and value
updates over that batch (update). The reward per token is ``-β·KL`` to the frozen reference (the
starting policy) plus the reward model's score on the last token; GAE turns those into
advantages. The pieces are tasks/ppo_loss.py; the sampler and value head tasks/ppo_rollout.py.

This module is what the loop runs on: the recipe's short forms, the setup (the policy with its
value head, the frozen reference, the reward model, the prompts) and the package. The task's
plugin and its iteration loop are tasks/ppo.py, on the run context every loop shares
(engine/run_context.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modelcycle import runs
from modelcycle.config import Config, load_config
from modelcycle.data.formats import read_prompts
from modelcycle.data.preference_batches import prompt_ids
from modelcycle.data.preferences import pair_sources
from modelcycle.engine import checkpoint, distributed
from modelcycle.errors import ConfigError
from modelcycle.lm.end_of_turn import end_of_turn_ids, package_record
from modelcycle.lm.load import open_lm
from modelcycle.lm.model import package_writer
from modelcycle.packages import open_package
from modelcycle.progress import info
from modelcycle.tasks.lm import prepare_model
from modelcycle.tasks.ppo_rollout import PolicyWithValue
from modelcycle.tasks.reward import pair_length

ALIASES = ("policy", "reward")  # `policy=RUN` is short for `ppo.policy=RUN`
NEEDS_BOTH = "ppo.policy and ppo.reward must be set: `modelcycle lm ppo CONFIG policy=RUN reward=RUN`"


def ppo_config(config: Config | str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The recipe with ``policy=`` / ``reward=`` as short forms of ``ppo.policy`` / ``ppo.reward``."""
    overrides = [f"ppo.{o}" if o.split("=", 1)[0] in ALIASES else o for o in overrides]
    if isinstance(config, Config):  # what the caller left unset stays unset, for the task's defaults
        config = load_config(None, overrides, base=config.model_dump(exclude_unset=True))
    else:
        config = load_config(config, overrides)
    if not config.ppo.policy or not config.ppo.reward:
        raise ConfigError(NEEDS_BOTH)
    return config.model_copy(update={"run": config.run.model_copy(update={"task": "ppo"})})


@dataclass
class PPOParts:
    """What the iteration loop works with."""

    built: Any  # tasks.lm.prepare_model's result: the policy's LM, tokenizer, base folder, records
    tokenizer: Any
    policy: PolicyWithValue
    reference: torch.nn.Module
    scorer: torch.nn.Module
    score_tokenizer: Any
    score_manifest: dict
    retokenised: bool
    prompts: list  # the chat messages of each prompt
    encoded: list  # their token ids, cut to leave room for the answer
    stop: list[int]  # end-of-turn token ids


def prompt_sources(data) -> list[str]:
    """What PPO answers: the prompts of ``data.root``'s prefs-train.jsonl or of ``data.train_files``
    (prompt-only records, or the prompts of conversations and preference pairs)."""
    sources = pair_sources(data.root, data.train_files, [])[0]
    if not sources:
        raise ConfigError(
            "data.root is not set, nor data.train_files; pass the folder with prefs-train.jsonl whose prompts PPO "
            "answers, or list files or folders of prompts (or of conversations or preference pairs) in "
            "data.train_files"
        )
    return sources


def setup(config: Config) -> PPOParts:
    p = config.ppo
    if not p.policy or not p.reward:
        raise ConfigError(NEEDS_BOTH)
    device = distributed.resolve_device(config.train.device)
    built = prepare_model(config.model_copy(update={"model": config.model.model_copy(update={"init_from": p.policy})}))
    tokenizer = built.tokenizer
    policy = PolicyWithValue(built.model).to(device)
    reference, _, _ = open_lm(built.base)
    reference = reference.to(device).requires_grad_(False)
    scorer, score_tokenizer, score_manifest = open_package(p.reward).load_scorer()
    scorer = scorer.to(device).requires_grad_(False)
    retokenised = score_tokenizer.get_vocab() != tokenizer.get_vocab()
    if retokenised:
        info("the reward model's tokenizer differs from the policy's: answers are scored on their re-tokenised text")
    prompts = read_prompts(prompt_sources(config.data))
    length = pair_length(config)
    budget = length - p.max_new_tokens
    if budget < 8:
        raise ConfigError(
            f"lm.context_length={length} leaves no room for prompts after ppo.max_new_tokens={p.max_new_tokens}; "
            "raise the one or lower the other"
        )
    encoded = [prompt_ids(tokenizer, m)[-budget:] for m in prompts]
    stop = end_of_turn_ids(tokenizer, getattr(built.model, "generation_config", None))
    return PPOParts(
        built,
        tokenizer,
        policy,
        reference,
        scorer,
        score_tokenizer,
        score_manifest,
        retokenised,
        prompts,
        encoded,
        stop,
    )


def write_package(run: runs.Run, parts: PPOParts, config: Config, metrics: dict, last: Path) -> None:
    """The tuned policy (its value head left out) as a Hugging Face causal LM, task ``ppo``."""
    built = parts.built
    weights = checkpoint.load(last)["policy"]
    lm_weights = {k.removeprefix("lm."): v for k, v in weights.items() if k.startswith("lm.")}
    policy = runs.read_manifest(built.base) if (built.base / runs.MANIFEST).is_file() else None
    manifest = {
        "task": "ppo",
        "backend": "transformers",
        "layout": "transformers",
        "architecture": built.record,
        "ppo": config.ppo.model_dump(mode="json"),
        "reward_model": {"package": parts.score_manifest["_dir"], "retokenised": parts.retokenised},
        "fine_tuning": {**built.tuning, "merged": built.tuning["lora"] is not None},
        "init_from": str(built.base.resolve()),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, float | int)},
        "source_run": str(run.path.resolve()),
        "checkpoint": last.name,
        "end_of_turn": package_record(policy, parts.tokenizer),  # the policy's (its SFT run's), as SFT records it
    }
    package_writer(built.model, parts.tokenizer, built.base, built.save_dtype)(run.model_dir, lm_weights, manifest)
