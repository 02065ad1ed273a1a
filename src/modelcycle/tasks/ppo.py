"""PPO's plugin and its iteration loop (``run.task=ppo``), on the run context every loop shares.

An iteration is PPO's unit of work, as an optimizer step is the epoch loop's: rollout, scoring and
``ppo.update_epochs`` passes of updates (tasks/ppo_setup.py says what they compute). From the run context
(engine/run_context.py) it gets what any run has: status.json, metrics.jsonl and events.log,
callbacks and MLflow, Ctrl-C/SIGTERM finishing the iteration, saving and exiting 130, checkpoints
with every random stream (so ``--resume`` ends with the same weights as an uninterrupted run), the
non-finite guard on the losses. ``train.*`` gives the optimizer, the learning-rate schedule (an
"epoch" of ``train.warmup_epochs`` or ``train.step_size`` is one iteration here), ``clip_grad``,
``seed`` and ``keep_checkpoints``; ``ppo.checkpoint_every`` counts iterations.

A NaN or infinite reward refuses the iteration: it is logged and training stops, keeping the
last good checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from modelcycle.config import Config
from modelcycle.engine import distributed
from modelcycle.engine.optim import build_optimizer, build_scheduler, check_groups
from modelcycle.engine.run_context import RunContext
from modelcycle.errors import ConfigError, NonFiniteLossError
from modelcycle.progress import progress_bar
from modelcycle.runs import Run
from modelcycle.tasks import ppo_loss as L
from modelcycle.tasks import ppo_setup
from modelcycle.tasks.plugin import TaskPlugin
from modelcycle.tasks.ppo_rollout import Rollout, response_figures, sample
from modelcycle.tasks.reward import pair_length, reward_scores

# the train.* keys this loop reads; any other one set to a value of its own is refused (ConfigError),
# not silently ignored: train.precision=bf16 or train.epochs=5 would do nothing here
READS = frozenset(
    {
        *("lr", "optimizer", "momentum", "nesterov", "weight_decay", "head_lr_mult"),  # engine/optim.py
        *("schedule", "warmup_epochs", "step_size", "gamma"),
        *("clip_grad", "seed", "device", "keep_checkpoints"),
    }
)


def refuse_unread(config: Config) -> None:
    """``train.*`` keys the caller set (to other than their default) that PPO's loop does not read."""
    train, default = config.train, type(config.train)()
    unread = sorted(key for key in train.model_fields_set - READS if getattr(train, key) != getattr(default, key))
    if unread:
        settings = ", ".join(f"train.{key}={getattr(train, key)}" for key in unread)
        raise ConfigError(
            f"{settings}: run.task=ppo does not read {'it' if len(unread) == 1 else 'them'}; its loop reads "
            f"train.{{{','.join(sorted(READS))}}} and ppo.* (ppo.iterations, ppo.checkpoint_every, ...). "
            "Remove the setting from the recipe or the command line"
        )


@dataclass
class PPOState:
    step: int = 0  # iterations completed (what callbacks and the run context count)
    updates: int = 0  # optimizer steps taken


class PPOLoop:
    def __init__(self, ctx: RunContext, config: Config, progress: bool = True, callbacks: list | None = None):
        if distributed.world_size() > 1:
            raise ConfigError("run.task=ppo trains on one process: drop --nproc (torchrun) for PPO")
        refuse_unread(config)
        self.ctx, self.config, self.cfg = ctx, config, config.train
        self.run_dir, self.event, self.progress = ctx.run_dir, ctx.event, progress
        self.callbacks = [*(callbacks or []), *ctx.callbacks]
        self.meta = {"task": "ppo"}
        self.parts = ppo_setup.setup(config)  # a wrong setting fails here, before the run folder appears
        self.meta["architecture"] = self.parts.built.record  # what status.json (and `modelcycle runs`) name
        p, policy = config.ppo, self.parts.policy
        self.optimizer = build_optimizer(policy, self.cfg)
        per_iteration = math.ceil(p.rollout_batch / p.minibatch) * p.update_epochs
        self.scheduler = build_scheduler(
            self.optimizer, self.cfg, per_iteration, total_steps=p.iterations * per_iteration
        )
        self.kl = L.KLController(p.kl_coef, p.kl_target, p.kl_horizon)
        self.state = PPOState()
        self.last: dict = {}

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict:
        return {
            "format": 1,
            "policy": self.parts.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "kl": self.kl.state_dict(),
            **distributed.rng_states(),
            "world_size": distributed.world_size(),
            "state": asdict(self.state),
            "iteration": self.state.step,
            "meta": self.meta,
        }

    def save(self) -> None:
        self.ctx.check_finite("", unit="iteration")
        self.ctx.save(self.checkpoint_state(), self.state.step, f"iteration={self.state.step}")

    def restore(self) -> bool:
        ck = self.ctx.load_last()
        if ck is None:
            return False
        ck.setdefault("state", {"step": ck["iteration"]})  # a checkpoint of the loop before the run context
        self.parts.policy.load_state_dict(ck["policy"])
        check_groups(self.optimizer, ck["optimizer"], self.ctx.last)
        self.optimizer.load_state_dict(ck["optimizer"])
        if "scheduler" in ck:
            self.scheduler.load_state_dict(ck["scheduler"])
        self.kl.load_state_dict(ck["kl"])
        self.state = PPOState(**ck["state"])
        self.ctx.resumed(ck, self.cfg.seed, f"iteration {self.state.step}")
        return True

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: bool = False) -> PPOState:
        if not (resume and self.restore()):
            self.ctx.fresh_start(resume)
            torch.manual_seed(self.cfg.seed)
        iterations = self.config.ppo.iterations
        start = self.state.step
        with self.ctx.fitting(self, f"step={start} iteration={start} of {iterations}"):
            bar = progress_bar("ppo iterations", iterations - start) if self.progress else _no_bar()
            with bar as advance:
                while self.state.step < iterations:
                    self._iterate()
                    advance()
        self.event(f"fit end step={self.state.step} iteration={self.state.step}")
        return self.state

    def _iterate(self) -> None:
        p, t, parts, state = self.config.ppo, self.cfg, self.parts, self.state
        iteration = state.step
        batch = _prompt_batch(len(parts.encoded), p.rollout_batch, iteration, t.seed)
        figures = self._iteration([parts.encoded[i] for i in batch], [parts.prompts[i] for i in batch])
        if not np.isfinite(figures["reward"]):
            self.event(f"iteration {iteration + 1}: the reward model returned NaN or infinity; step refused")
            raise NonFiniteLossError(
                f"ppo iteration {iteration + 1}: the reward model ({p.reward}) gave a NaN or infinite score, "
                f"so the step was refused and training stopped; {self.ctx.kept()}. Check the reward model "
                f"(`modelcycle evaluate {p.reward}`), then --resume"
            )
        state.step += 1
        self.ctx.check_finite("", unit="iteration")  # a NaN policy or value loss: stop before it is saved
        self.last = {"step": state.step, "iteration": state.step, "lr": self.optimizer.param_groups[0]["lr"], **figures}
        if self.ctx.metrics_log:
            self.ctx.metrics_log.write(self.last)
        for cb in self.callbacks:
            cb.on_log(self, self.last)
        for cb in self.callbacks:
            cb.on_step_end(self)
        saved = state.step % p.checkpoint_every == 0 or state.step == p.iterations
        if saved:
            self.save()
        if self.ctx.stop_requested():
            if not saved:
                self.save()
            raise self.ctx.interrupted(f"iteration {state.step}")

    def _iteration(self, prompts: list, messages: list) -> dict[str, float]:
        """One rollout, its scores and ``ppo.update_epochs`` passes of clipped updates; its figures."""
        p, t, parts = self.config.ppo, self.cfg, self.parts
        policy, tokenizer = parts.policy, parts.tokenizer
        started = time.perf_counter()
        rollout = sample(policy.lm, prompts, tokenizer.pad_token_id, parts.stop, p.max_new_tokens, p.temperature)
        rolled = time.perf_counter()
        texts = rollout.texts(tokenizer)
        scores = reward_scores(parts.scorer, parts.score_tokenizer, messages, texts, pair_length(self.config))
        scores = scores.to(rollout.mask.device)
        scored = time.perf_counter()
        if not torch.isfinite(scores).all():
            return {"reward": float("nan")}
        mask = rollout.mask
        with torch.no_grad():
            old_logp, old_values, _ = response_figures(policy, rollout, p.temperature)
            ref_logp, _, _ = response_figures(parts.reference, rollout, p.temperature, with_values=False)
            per_token_kl = L.kl_per_token(old_logp, ref_logp) * mask
            # a judge whose scores differ little between the policy's answers (all far from the text it
            # learned on) gives a signal the KL penalty drowns: whitened, the ranking is what counts
            used = L.masked_whiten(scores, torch.ones_like(scores)) if p.whiten_scores else scores
            rewards = L.token_rewards(used, per_token_kl, mask, self.kl.value)
            advantages, returns = L.gae(rewards, old_values, mask, p.gamma, p.lam)
            advantages = L.masked_whiten(advantages, mask)
        figures: dict[str, float] = {"policy_loss": 0.0, "value_loss": 0.0, "clipfrac": 0.0, "entropy": 0.0}
        updates = 0
        policy.train()
        for _ in range(p.update_epochs):
            for chunk in torch.randperm(len(prompts)).split(p.minibatch):
                part = Rollout(
                    rollout.sequences[chunk], rollout.attention_mask[chunk], rollout.prompt_width, mask[chunk]
                )
                logp, values, logits = response_figures(policy, part, p.temperature)
                pl, clipfrac = L.policy_loss(logp, old_logp[chunk], advantages[chunk], part.mask, p.clip)
                vl, _ = L.value_loss(values, old_values[chunk], returns[chunk], part.mask, p.value_clip)
                loss = pl + p.vf_coef * vl
                loss.backward()
                self.ctx.note_loss(loss, self.state.step + 1)
                if t.clip_grad:
                    torch.nn.utils.clip_grad_norm_(policy.parameters(), t.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.state.updates += 1
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
        coef = self.kl.value
        self.kl.update(sequence_kl, len(prompts))
        return {
            "reward": float(scores.mean()),
            "kl": sequence_kl,
            "kl_coef": coef,
            **{k: v / updates for k, v in figures.items()},
            "response_length": float(mask.sum(1).mean()),
            "ended": float(
                torch.isin(rollout.responses, torch.tensor(parts.stop, device=mask.device)).any(1).float().mean()
            ),
            "rollout_s": rolled - started,
            "score_s": scored - rolled,
            "update_s": time.perf_counter() - scored,
        }

    # ------------------------------------------------------------------ the package

    def write_package(self, run: Run) -> None:
        metrics = self.last or (run.metrics[-1:] or [{}])[0]  # a resumed run with nothing left to do
        ppo_setup.write_package(run, self.parts, self.config, metrics, self.ctx.last)


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


@contextlib.contextmanager
def _no_bar():
    yield lambda n=1: None


# it trains in its own loop (PPOLoop above; tasks/ppo_setup.py builds what it runs on), not the
# engine's epochs, at a constant learning rate unless the recipe sets train.schedule
PLUGIN = TaskPlugin(
    name="ppo",
    loop=PPOLoop,
    defaults={"train": {"schedule": "none"}},
    evaluate="language_model",
    summary_metrics=("reward", "kl"),
    capabilities=frozenset({"chat"}),
    view="language_model",
    package_kind="hf_causal_lm",
    serve_protocols=("openai",),
    model_from=("ppo.policy",),
    # the policy is ppo.policy (model.name and model.init_from are not read), with model.lora and
    # lm.tokenizer applied as tasks/lm.prepare_model does; the prompts of data.root or data.train_files;
    # what `modelcycle evaluate` reads of the run (lm.val_files, lm.eval_*). train.* is narrowed further by READS above
    reads=(
        *("ppo", "data.root", "data.train_files", "data.max_length", "model.args", "model.freeze", "model.lora"),
        *("lm.tokenizer", "lm.context_length", "lm.val_files", "lm.eval_samples", "lm.eval_tokens"),
        *("lm.save_dtype", "lm.tokenizer_mismatch_ok"),
    ),
    description="PPO: a policy tuned against a reward model, with a per-token KL penalty to its start",
)
