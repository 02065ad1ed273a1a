"""PPO for language models (``modelcycle lm ppo``, Ouyang et al. 2022 / Ziegler et al. 2019).

Each iteration: sample answers to a batch of prompts from the policy (rollout), score them with
the frozen reward model (scoring), then take ``ppo.update_epochs`` passes of clipped policy and value
updates over that batch (update). The reward per token is ``-β·KL`` to the frozen reference (the
starting policy) plus the reward model's score on the last token; GAE turns those into
advantages. The pieces are tasks/ppo_loss.py; the sampler and value head tasks/ppo_rollout.py.

This is its own loop, not the engine's one-loss-per-batch ``Trainer``, but it reuses the
engine's optimizer, checkpoint writing, RNG state, metrics and event logs, run folders and the
package writer. A NaN or infinite reward refuses the step: it is logged and training stops,
keeping the last good checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from modelcycle import runs
from modelcycle.config import Config, load_config
from modelcycle.data.preference_batches import prompt_ids
from modelcycle.data.preferences import open_pairs, unique_prompts
from modelcycle.engine import checkpoint, distributed
from modelcycle.engine.loggers import EventLog, MetricsLog
from modelcycle.engine.optim import build_optimizer
from modelcycle.errors import ConfigError, NonFiniteLossError
from modelcycle.lm.load import open_lm
from modelcycle.lm.model import package_writer
from modelcycle.lm.tokenizer import end_of_turn_ids
from modelcycle.models.text import load_package
from modelcycle.progress import info, progress_bar
from modelcycle.tasks import ppo_loss as L
from modelcycle.tasks.lm import prepare_model
from modelcycle.tasks.ppo_rollout import PolicyWithValue, Rollout, response_figures, sample
from modelcycle.tasks.reward import pair_length, reward_scores


def ppo_config(config: Config | str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The recipe with ``policy=`` / ``reward=`` as short forms of ``ppo.policy`` / ``ppo.reward``."""
    overrides = [f"ppo.{o}" if o.split("=", 1)[0] in ("policy", "reward") else o for o in overrides]
    if isinstance(config, Config):
        config = load_config(None, overrides, base=config.model_dump())
    else:
        config = load_config(config, overrides)
    if not config.ppo.policy or not config.ppo.reward:
        raise ConfigError("ppo.policy and ppo.reward must be set: `modelcycle lm ppo CONFIG policy=RUN reward=RUN`")
    return config.model_copy(update={"run": config.run.model_copy(update={"task": "ppo"})})


def train_ppo(
    config: Config | str | Path | None,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    overwrite: bool = False,
) -> runs.Run:
    """Tune ``ppo.policy`` against the reward model ``ppo.reward``; returns the run folder whose
    ``model/`` is the tuned policy as a Hugging Face causal LM (task ``ppo``)."""
    config = ppo_config(config, overrides)
    p, t = config.ppo, config.train
    run_dir = runs.check_run_dir(config, resume=resume or overwrite)
    device = distributed.resolve_device(t.device)
    built = prepare_model(config.model_copy(update={"model": config.model.model_copy(update={"init_from": p.policy})}))
    tokenizer = built.tokenizer
    policy = PolicyWithValue(built.model).to(device)
    reference, _, _ = open_lm(built.base)
    reference = reference.to(device).requires_grad_(False)
    scorer, score_tokenizer, score_manifest = load_package(p.reward, task="reward")
    scorer = scorer.to(device).requires_grad_(False)
    retokenised = score_tokenizer.get_vocab() != tokenizer.get_vocab()
    if retokenised:
        info("the reward model's tokenizer differs from the policy's: answers are scored on their re-tokenised text")
    if not config.data.root:
        raise ConfigError("data.root is not set; pass the folder with prefs-train.jsonl whose prompts PPO answers")
    prompts = unique_prompts(open_pairs(config.data.root)[0])
    length = pair_length(config)
    budget = length - p.max_new_tokens
    if budget < 8:
        raise ConfigError(
            f"lm.context_length={length} leaves no room for prompts after ppo.max_new_tokens={p.max_new_tokens}; "
            "raise the one or lower the other"
        )
    encoded = [prompt_ids(tokenizer, m)[-budget:] for m in prompts]
    optimizer = build_optimizer(policy, t)
    kl = L.KLController(p.kl_coef, p.kl_target, p.kl_horizon)
    # one process writes the run folder, for the run's whole life (see runlock.py)
    with runs.run_folder(run_dir, config, overwrite and not resume, resume, writer=distributed.is_main()):
        ckpt = run_dir / "checkpoints" / "last.pt"
        metrics, event = MetricsLog(run_dir / "metrics.jsonl"), EventLog(run_dir / "events.log")
        start = 0
        if resume and ckpt.exists():
            state = checkpoint.load(ckpt)
            policy.load_state_dict(state["policy"])
            optimizer.load_state_dict(state["optimizer"])
            kl.load_state_dict(state["kl"])
            checkpoint.set_rng_state(state["rng"])
            start = state["iteration"]
            metrics.truncate_after(start)
            event(f"resumed from iteration {start}")
        else:
            torch.manual_seed(t.seed)
            metrics.truncate_after(0)

        def save(iteration: int) -> None:
            state = {"policy": policy.state_dict(), "optimizer": optimizer.state_dict(), "kl": kl.state_dict()}
            checkpoint.atomic_save({**state, "rng": checkpoint.rng_state(), "iteration": iteration}, ckpt)
            event(f"checkpoint iteration={iteration}")

        stop = end_of_turn_ids(tokenizer, getattr(built.model, "generation_config", None))
        event(f"ppo start iteration={start} of {p.iterations}")
        last: dict = {}
        with progress_bar("ppo iterations", p.iterations - start) as advance:
            for iteration in range(start, p.iterations):
                batch = _prompt_batch(len(encoded), p.rollout_batch, iteration, t.seed)
                last = _iteration(
                    config,
                    policy,
                    reference,
                    scorer,
                    score_tokenizer,
                    tokenizer,
                    stop,
                    kl,
                    optimizer,
                    [encoded[i] for i in batch],
                    [prompts[i] for i in batch],
                )
                if not np.isfinite(last["reward"]):
                    kept = (
                        f"the last good checkpoint {ckpt} is kept" if ckpt.exists() else "no checkpoint was written yet"
                    )
                    event(f"iteration {iteration + 1}: the reward model returned NaN or infinity; step refused")
                    raise NonFiniteLossError(
                        f"ppo iteration {iteration + 1}: the reward model ({p.reward}) gave a NaN or infinite score, "
                        f"so the step was refused and training stopped; {kept}. Check the reward model "
                        f"(`modelcycle evaluate {p.reward}`), then --resume"
                    )
                metrics.write({"step": iteration + 1, "iteration": iteration + 1, **last})
                if (iteration + 1) % p.checkpoint_every == 0 or iteration + 1 == p.iterations:
                    save(iteration + 1)
                advance()
        weights = checkpoint.load(ckpt)["policy"]
        lm_weights = {k.removeprefix("lm."): v for k, v in weights.items() if k.startswith("lm.")}
        manifest = {
            "task": "ppo",
            "backend": "transformers",
            "layout": "transformers",
            "architecture": built.record,
            "ppo": p.model_dump(mode="json"),
            "reward_model": {"package": score_manifest["_dir"], "retokenised": retokenised},
            "fine_tuning": {**built.tuning, "merged": built.tuning["lora"] is not None},
            "init_from": str(built.base.resolve()),
            "metrics": {k: v for k, v in last.items() if isinstance(v, float | int)},
            "source_run": str(run_dir.resolve()),
        }
        run = runs.Run(run_dir)
        package_writer(built.model, tokenizer, built.base)(run.model_dir, lm_weights, manifest)
        event(f"ppo end iteration={p.iterations}")
        return run


def _prompt_batch(count: int, size: int, iteration: int, seed: int) -> list[int]:
    """Prompt indices for an iteration: a seeded permutation per pass over the prompts, so a
    resumed run answers the same prompts as an uninterrupted one."""
    out = []
    position = iteration * size
    while len(out) < size:
        epoch, offset = divmod(position, count)
        order = np.random.default_rng([seed, epoch]).permutation(count)
        take = order[offset : offset + size - len(out)].tolist()
        out += take
        position += len(take)
    return out


def _iteration(config, policy, reference, scorer, score_tokenizer, tokenizer, stop, kl, optimizer, prompts, messages):
    p, t = config.ppo, config.train
    started = time.perf_counter()
    rollout = sample(policy.lm, prompts, tokenizer.pad_token_id, stop, p.max_new_tokens, p.temperature)
    rolled = time.perf_counter()
    texts = rollout.texts(tokenizer)
    scores = reward_scores(scorer, score_tokenizer, messages, texts, pair_length(config)).to(rollout.mask.device)
    scored = time.perf_counter()
    if not torch.isfinite(scores).all():
        return {"reward": float("nan")}
    mask = rollout.mask
    with torch.no_grad():
        old_logp, old_values, _ = response_figures(policy, rollout, p.temperature)
        ref_logp, _, _ = response_figures(reference, rollout, p.temperature, with_values=False)
        per_token_kl = L.kl_per_token(old_logp, ref_logp) * mask
        # a judge whose scores differ little between the policy's answers (all far from the text it
        # learned on) gives a signal the KL penalty drowns: whitened, the ranking is what counts
        used = L.masked_whiten(scores, torch.ones_like(scores)) if p.whiten_scores else scores
        rewards = L.token_rewards(used, per_token_kl, mask, kl.value)
        advantages, returns = L.gae(rewards, old_values, mask, p.gamma, p.lam)
        advantages = L.masked_whiten(advantages, mask)
    figures: dict[str, float] = {"policy_loss": 0.0, "value_loss": 0.0, "clipfrac": 0.0, "entropy": 0.0}
    updates = 0
    policy.train()
    for _ in range(p.update_epochs):
        for chunk in torch.randperm(len(prompts)).split(p.minibatch):
            part = Rollout(rollout.sequences[chunk], rollout.attention_mask[chunk], rollout.prompt_width, mask[chunk])
            logp, values, logits = response_figures(policy, part, p.temperature)
            pl, clipfrac = L.policy_loss(logp, old_logp[chunk], advantages[chunk], part.mask, p.clip)
            vl, _ = L.value_loss(values, old_values[chunk], returns[chunk], part.mask, p.value_clip)
            (pl + p.vf_coef * vl).backward()
            if t.clip_grad:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), t.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                step = {
                    "policy_loss": pl,
                    "value_loss": vl,
                    "clipfrac": clipfrac,
                    "entropy": L.entropy(logits, part.mask),
                }
            for key, value in step.items():
                figures[key] += float(value.detach())
            updates += 1
    sequence_kl = float(per_token_kl.sum(1).mean())
    coef = kl.value
    kl.update(sequence_kl, len(prompts))
    return {
        "reward": float(scores.mean()),
        "kl": sequence_kl,
        "kl_coef": coef,
        **{k: v / updates for k, v in figures.items()},
        "response_length": float(mask.sum(1).mean()),
        "ended": float(torch.isin(rollout.responses, torch.tensor(stop, device=mask.device)).any(1).float().mean()),
        "rollout_s": rolled - started,
        "score_s": scored - rolled,
        "update_s": time.perf_counter() - scored,
    }


from modelcycle.tasks.plugin import TaskPlugin as _TaskPlugin  # noqa: E402  (the plugin is declared last)

# its own loop (train_ppo above), not the engine's epochs: the training service sends run.task=ppo here
PLUGIN = _TaskPlugin(
    name="ppo",
    loop="ppo",
    evaluate="language_model",
    summary_metrics=("reward", "kl"),
    capabilities=frozenset({"chat"}),
    view="lm",
    package_kind="hf_causal_lm",
    description="PPO: a policy tuned against a reward model, with a per-token KL penalty to its start",
)
