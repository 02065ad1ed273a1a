"""`modelcycle lm ...`: the language-model verbs (tokenizer, pretrain, sft, merge, generate, chat,
reward, ppo, dpo), each a thin call into the Python API like the image verbs in cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from modelcycle.progress import info, stdout

lm_app = typer.Typer(
    help="Language models: tokenizer -> pretrain -> sft -> reward -> ppo/dpo, and generate/chat with the result.\n\n"
    "Every model is a Hugging Face folder (config.json, model.safetensors, tokenizer.json), so a local "
    "Qwen or Llama folder works with every verb and what we train loads in transformers as it is.",
    no_args_is_help=True,
)


# ---------------------------------------------------------------- reward model, DPO, PPO (docs/lm-rlhf.md)

PREF_OVERRIDES = "Config overrides as key=value, e.g. model.init_from=runs/lm-sft dpo.beta=0.1 train.epochs=3"


def _train_on_pairs(task: str, config: str, overrides: list[str] | None, resume: bool, overwrite: bool) -> None:
    from modelcycle.api import train
    from modelcycle.cli import _split_config
    from modelcycle.config import load_config

    path, overrides = _split_config(config, overrides)
    run = train(load_config(path, [*overrides, f"run.task={task}"]), resume=resume, overwrite=overwrite)
    last = run.epoch_metrics()[-1:] or [{}]
    shown = "  ".join(f"{k}={last[0][k]:.4f}" for k in ("val_accuracy", "val_margin", "val_loss") if k in last[0])
    info(f"run {run.path}: model package in {run.model_dir}  {shown}")


@lm_app.command()
def reward(
    config: str = typer.Argument(..., help="YAML recipe (configs/lm-reward.yaml) or a first key=value override."),
    overrides: list[str] | None = typer.Argument(None, help=PREF_OVERRIDES),
    resume: bool = typer.Option(False, "--resume", help="Continue runs/NAME from checkpoints/last.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run folder of the same name."),
):
    """Train a reward model on preference pairs (Bradley-Terry loss; run.task=reward): a scalar head on the
    model in model.init_from; reports held-out pairwise accuracy; the package is served by `modelcycle serve`."""
    _train_on_pairs("reward", config, overrides, resume, overwrite)


@lm_app.command()
def dpo(
    config: str = typer.Argument(..., help="YAML recipe (configs/lm-dpo.yaml) or a first key=value override."),
    overrides: list[str] | None = typer.Argument(None, help=PREF_OVERRIDES),
    resume: bool = typer.Option(False, "--resume", help="Continue runs/NAME from checkpoints/last.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run folder of the same name."),
):
    """Tune the policy in model.init_from on preference pairs with DPO (dpo.loss sigmoid/hinge/ipo, or the
    reference-free simpo/orpo; dpo.beta); logs implicit reward accuracy and margins."""
    _train_on_pairs("dpo", config, overrides, resume, overwrite)


@lm_app.command()
def ppo(
    config: str = typer.Argument(..., help="YAML recipe (configs/lm-ppo.yaml) or a first key=value override."),
    overrides: list[str] | None = typer.Argument(
        None, help="policy=RUN reward=RUN (short for ppo.policy, ppo.reward) and key=value overrides."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue runs/NAME from checkpoints/last.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run folder of the same name."),
):
    """Tune a policy against a reward model with PPO (rollouts, per-token KL to the reference, GAE, clipped
    updates); logs reward, KL, entropy, clip fraction and value loss per iteration."""
    from modelcycle.cli import _split_config
    from modelcycle.tasks.ppo import train_ppo

    path, overrides = _split_config(config, overrides)
    run = train_ppo(path, overrides, resume=resume, overwrite=overwrite)
    last = run.metrics[-1:] or [{}]
    shown = "  ".join(f"{k}={last[0][k]:.4f}" for k in ("reward", "kl") if k in last[0])
    info(f"run {run.path}: model package in {run.model_dir}  {shown}")


def show_policy_evaluation(
    run: Path, against: Path | None, reward: Path | None, data: Path | None, samples: int, as_json: bool
) -> None:
    """`modelcycle evaluate` on a reward run, or on a policy with --against."""
    from rich.table import Table

    from modelcycle.api import compare, evaluate

    if against is None:
        metrics = evaluate(run, data=data)
        if as_json:
            stdout.print_json(json.dumps(metrics))
        else:
            info(
                f"{run}: pairwise accuracy {metrics['pairwise_accuracy']:.3f} on {metrics['num_pairs']} held-out "
                f"pairs, mean margin {metrics['mean_margin']:.3f}"
            )
        return
    result = compare(run, against, reward=reward, data=data, samples=samples)
    if as_json:
        stdout.print_json(json.dumps({k: result[k] for k in ("win_rate", "mean_reward", "baseline_reward", "kl")}))
        return
    table = Table(title=f"{run} against {against} ({result['num_prompts']} held-out prompts)")
    for column in ("prompt", "answer", "reward", "baseline answer", "baseline reward"):
        table.add_column(column, overflow="fold")
    for s in result["samples"][:8]:
        table.add_row(
            s["prompt"],
            s["answer"][:160],
            f"{s['reward']:.2f}",
            s["baseline_answer"][:160],
            f"{s['baseline_reward']:.2f}",
        )
    stdout.print(table)
    kl = "n/a (different tokenizers)" if result["kl"] is None else f"{result['kl']:.3f} nats"
    stdout.print(
        f"win rate {result['win_rate']:.1%}  mean reward {result['mean_reward']:.3f} (baseline "
        f"{result['baseline_reward']:.3f})  KL to the baseline {kl}",
        highlight=False,
    )
