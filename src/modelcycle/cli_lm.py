"""`modelcycle lm ...`: the language-model verbs (tokenizer, pretrain, sft, merge, generate, chat,
reward, ppo, dpo), each a thin call into the Python API like the image verbs in cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from modelcycle.cli_common import split_config
from modelcycle.progress import console, info, stdout

lm_app = typer.Typer(
    help="Language models: tokenizer -> pretrain -> sft -> reward -> ppo/dpo, and generate/chat with the result.\n\n"
    "Every model is a Hugging Face folder (config.json, model.safetensors, tokenizer.json), so a local "
    "Qwen or Llama folder works with every verb and what we train loads in transformers as it is.",
    no_args_is_help=True,
)

OVERRIDES_HELP = "Config overrides as key=value, e.g. train.epochs=3 lm.context_length=128 lora.r=8"


@lm_app.command()
def tokenizer(
    files: list[Path] = typer.Argument(..., help="Text files to learn the merges from (data/pydocs/corpus.txt)."),
    vocab: int = typer.Option(4000, "--vocab", help="Tokens in the vocabulary: 256 bytes + 4 special + merges."),
    out: Path = typer.Option(..., "--out", help="Folder for tokenizer.json + tokenizer_config.json (runs/tok)."),
    min_frequency: int = typer.Option(2, help="A pair must occur this often to become a merge."),
):
    """Train a byte-level BPE tokenizer with the special tokens and ChatML chat template (AutoTokenizer loads it)."""
    from modelcycle.lm.tokenizer import train_tokenizer

    trained = train_tokenizer(files, vocab, out, min_frequency=min_frequency)
    info(f"tokenizer: {len(trained):,} tokens in {out}/ (eos {trained.eos_token}, pad {trained.pad_token})")


def _train(task: str, config: str, overrides: list[str] | None, resume: bool, overwrite: bool) -> None:
    from modelcycle.api import train
    from modelcycle.config import load_config
    from modelcycle.tasks import registry

    path, overrides = split_config(config, overrides)
    # the task over the file (`lm sft` always fine-tunes); the training service fills the task's
    # defaults (tasks/<task>.py) into what the file and the overrides leave unset
    cfg = load_config(path, [*overrides, f"run.task={task}"])
    run = train(cfg, resume=resume, overwrite=overwrite)
    last = run.epoch_metrics()[-1:] or [{}]
    shown = "  ".join(f"{k}={last[0][k]:.4f}" for k in registry.get(task).summary_metrics if k in last[0])
    info(f"run {run.path}: model package in {run.model_dir}  {shown}")


RESUME = typer.Option(False, "--resume", help="Continue runs/NAME from checkpoints/last.pt.")
OVERWRITE = typer.Option(False, "--overwrite", help="Delete an existing run folder of the same name.")


@lm_app.command()
def pretrain(
    config: str = typer.Argument(..., help="YAML recipe (configs/lm-pretrain.yaml) or a first key=value override."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
):
    """Pretrain a causal LM (next-token loss on packed text; run.task=lm); writes runs/NAME/ with an HF package."""
    _train("lm", config, overrides, resume, overwrite)


@lm_app.command()
def sft(
    config: str = typer.Argument(..., help="YAML recipe (configs/lm-sft.yaml) or a first key=value override."),
    overrides: list[str] | None = typer.Argument(
        None, help=OVERRIDES_HELP + "; model.init_from=runs/lm-pretrain starts from that run (or any HF folder)"
    ),
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
):
    """Fine-tune on conversations (chat or Alpaca JSONL), loss on assistant tokens only; full or LoRA (lora.r=8)."""
    _train("sft", config, overrides, resume, overwrite)


@lm_app.command()
def merge(
    source: Path = typer.Argument(..., help="A LoRA run (runs/NAME), its model/ package, or a peft adapter folder."),
    out: Path = typer.Option(..., "--out", help="Folder for the plain package (config.json, model.safetensors ...)."),
    base: Path | None = typer.Option(None, help="The base model folder (default: the one adapter_config.json names)."),
):
    """Fold LoRA adapters into the base weights: a plain LM package that needs no peft."""
    from modelcycle.api import merge_lora

    manifest = merge_lora(source, out, base)
    info(f"merged package: {manifest['_dir']} (adapter {manifest['fine_tuning']['merged_from']})")


@lm_app.command()
def gates(
    pretrain_run: Path = typer.Argument(..., help="The pretraining run (runs/lm-pretrain)."),
    sft_run: Path = typer.Argument(..., help="The SFT run fine-tuned from it (runs/lm-sft)."),
    reward: Path | None = typer.Option(
        None, help="A reward run (runs/lm-reward): adds its held-out pairwise accuracy, and judges --dpo/--ppo."
    ),
    dpo: Path | None = typer.Option(None, help="With --reward, a DPO run: implicit-reward accuracy, win rate vs SFT."),
    ppo: Path | None = typer.Option(None, help="With --reward, a PPO run: win rate against the SFT policy."),
    samples: int = typer.Option(4, min=1, help="Answers each policy samples per held-out prompt for the win rates."),
    as_json: bool = typer.Option(False, "--json", help="Print the gates as JSON."),
):
    """The quality gates: pretraining beats a bigram model, SFT lowers answer loss, answers end; with --reward
    (and --dpo/--ppo) the preference gates of docs/lm-rlhf.md. Exit 1 if one fails."""
    from modelcycle.errors import UserError
    from modelcycle.evaluation.lm import quality_gates

    if (dpo or ppo) and not reward:
        raise UserError("--dpo and --ppo are judged by a reward model: pass --reward runs/lm-reward too")
    rows = quality_gates(pretrain_run, sft_run)
    if reward:
        from modelcycle.evaluation.preference_gates import preference_gates

        rows += preference_gates(sft_run, reward, dpo, ppo, samples)
    if as_json:
        stdout.print_json(json.dumps(rows))
    else:
        table = Table(title="language-model quality gates")
        for column in ("gate", "value", "baseline", "result"):
            table.add_column(column, justify="left" if column == "gate" else "right")
        for r in rows:
            verdict = "[green]PASS[/green]" if r["passed"] else "[red]FAIL[/red]"
            table.add_row(r["gate"], f"{r['value']:.4g}", f"{r['baseline']:.4g}", verdict)
        console.print(table)
    if not all(r["passed"] for r in rows):
        raise typer.Exit(1)


def show_lm_metrics(run: Path, metrics: dict, as_json: bool) -> None:
    """`modelcycle evaluate` on a language model: one JSON object, or the figures and a table of answers."""
    if as_json:
        keys = ("perplexity", "answer_loss", "samples", "bigram_perplexity", "tokens", "samples_ended", "data", "task")
        stdout.print_json(json.dumps({k: metrics.get(k) for k in keys}))
        return
    lines = [f"perplexity {metrics['perplexity']:.2f} on {metrics['tokens']:,} held-out tokens"]
    if metrics.get("bigram_perplexity") is not None:
        lines.append(f"add-one bigram on the same tokens {metrics['bigram_perplexity']:.2f}")
    if metrics.get("answer_loss") is not None:
        lines.append(f"answer loss {metrics['answer_loss']:.4f}")
    if metrics["samples"]:
        table = Table(title=f"{run}: answers to held-out prompts (greedy)")
        for column in ("prompt", "answer", "ended"):
            table.add_column(column)
        for s in metrics["samples"]:
            table.add_row(s["prompt"], " ".join(s["answer"].split()), "yes" if s["ended"] else "no")
        console.print(table)
    info("  ".join(lines) + f"\nreport: {metrics['report']}")


# ---------------------------------------------------------------- generate, chat (lm/generate.py, lm/chat.py)

MODEL_HELP = "A run folder (runs/lm-sft), its model/ package, or any local Hugging Face causal-LM folder."
MODEL_DEFAULT = " Default: the model's generation_config.json, else {}."
MAX_NEW_HELP = "Most new tokens per answer (fewer when the prompt leaves less room in the context)." + MODEL_DEFAULT
TEMPERATURE_HELP = "0 = greedy (always the likeliest token); higher = more varied text." + MODEL_DEFAULT.format(0.7)
TOP_K_HELP = "Sample only among the K likeliest tokens (0: no limit)." + MODEL_DEFAULT.format(0)
TOP_P_HELP = (
    "Sample only among the likeliest tokens whose probabilities add up to P (1: no limit)." + MODEL_DEFAULT.format(0.95)
)
PENALTY_HELP = (
    "Above 1 makes tokens already in the text less likely (1.1-1.3 curbs loops; 1: off)." + MODEL_DEFAULT.format(1.0)
)
STOP_HELP = "Text that ends the answer (not printed); repeat the option for several."
SEED_HELP = "Seed for sampling: the same seed and prompt give the same answer."
DEVICE_HELP = "cpu, cuda, cuda:1 ... or auto (the GPU when there is one)."
FALLBACK = {"temperature": 0.7, "top_k": 0, "top_p": 0.95, "repetition_penalty": 1.0}


def _sampling(lm, max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop, seed, default_tokens: int):
    """The flags given, else the model's generation_config.json defaults, else ours."""
    from modelcycle.lm.defaults import model_defaults, with_defaults

    given = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "repetition_penalty": repetition_penalty,
        "stop": tuple(stop or ()),
        "seed": seed,
    }
    own = model_defaults(getattr(lm.model, "generation_config", None))
    return with_defaults(given, own, {**FALLBACK, "max_new_tokens": default_tokens})


@lm_app.command()
def generate(
    model: str = typer.Argument(..., help=MODEL_HELP),
    prompts: list[str] = typer.Argument(..., help="One or more prompts; several are generated as one batch."),
    max_new_tokens: int | None = typer.Option(None, help=MAX_NEW_HELP.format(128), show_default=False),
    temperature: float | None = typer.Option(None, help=TEMPERATURE_HELP, show_default=False),
    top_k: int | None = typer.Option(None, help=TOP_K_HELP, show_default=False),
    top_p: float | None = typer.Option(None, help=TOP_P_HELP, show_default=False),
    repetition_penalty: float | None = typer.Option(None, help=PENALTY_HELP, show_default=False),
    stop: list[str] | None = typer.Option(None, help=STOP_HELP),
    seed: int | None = typer.Option(None, help=SEED_HELP),
    chat: bool | None = typer.Option(
        None,
        "--chat/--no-chat",
        help="Wrap each prompt as a user message in the model's chat template (default: yes when the tokenizer "
        "has a chat template and the model is not a pretraining-only run).",
    ),
    device: str = typer.Option("auto", help=DEVICE_HELP),
):
    """Generate text, printed token by token as it comes (one prompt) or answer by answer (several)."""
    import sys

    from modelcycle.lm.load import load_lm
    from modelcycle.progress import info

    lm = load_lm(model, device=device)
    sampling = _sampling(lm, max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop, seed, 128)
    if chat is None:
        from modelcycle.tasks import registry

        chats = lm.manifest is None or registry.for_manifest(lm.manifest).can("chat")  # a foreign folder: its template
        chat = bool(getattr(lm.tokenizer, "chat_template", None)) and chats
    inputs = [lm.chat_ids([{"role": "user", "content": p}]) if chat else p for p in prompts]
    stream = lm.stream(inputs, sampling)
    for piece in stream:
        if len(prompts) == 1:
            sys.stdout.write(piece.text)
            sys.stdout.flush()
    for i, result in enumerate(stream.results):
        sys.stdout.write(f"--- {i}: {prompts[i]}\n{result.text}\n" if len(prompts) > 1 else "\n")
        sys.stdout.flush()
        info(f"[{result.prompt_tokens} prompt + {len(result.token_ids)} new tokens, ended by {result.finish_reason}]")


@lm_app.command()
def chat(
    model: str = typer.Argument(..., help=MODEL_HELP),
    system: str | None = typer.Option(None, help="A system message that opens the conversation."),
    max_new_tokens: int | None = typer.Option(None, help=MAX_NEW_HELP.format(256), show_default=False),
    temperature: float | None = typer.Option(None, help=TEMPERATURE_HELP, show_default=False),
    top_k: int | None = typer.Option(None, help=TOP_K_HELP, show_default=False),
    top_p: float | None = typer.Option(None, help=TOP_P_HELP, show_default=False),
    repetition_penalty: float | None = typer.Option(None, help=PENALTY_HELP, show_default=False),
    stop: list[str] | None = typer.Option(None, help=STOP_HELP),
    seed: int | None = typer.Option(None, help=SEED_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
):
    """Talk with a chat model in the terminal: answers stream as they are made, the conversation is
    remembered (/reset forgets it, /exit or Ctrl-D leaves); lines are edited with the arrow keys and the
    previous ones come back with Up. Reads stdin line by line when it is not a terminal, so it can be piped."""
    import sys

    from modelcycle.lm.chat import ChatSession, repl, terminal_reader
    from modelcycle.lm.load import load_lm
    from modelcycle.progress import info

    lm = load_lm(model, device=device)
    sampling = _sampling(lm, max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop, seed, 256)
    session = ChatSession(lm, sampling, system)
    lm.chat_ids([{"role": "user", "content": "hi"}])  # no chat template: say so before the first question

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    read = terminal_reader("you>") if sys.stdin.isatty() else sys.stdin.readline
    repl(session, read, write, info)


# ---------------------------------------------------------------- reward model, DPO, PPO (docs/lm-rlhf.md)

PREF_OVERRIDES = "Config overrides as key=value, e.g. model.init_from=runs/lm-sft dpo.beta=0.1 train.epochs=3"


@lm_app.command()
def reward(
    config: str = typer.Argument(..., help="YAML recipe (configs/lm-reward.yaml) or a first key=value override."),
    overrides: list[str] | None = typer.Argument(None, help=PREF_OVERRIDES),
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
):
    """Train a reward model on preference pairs (Bradley-Terry loss; run.task=reward): a scalar head on the
    model in model.init_from; reports held-out pairwise accuracy; the package is served by `modelcycle serve`."""
    _train("reward", config, overrides, resume, overwrite)


@lm_app.command()
def dpo(
    config: str = typer.Argument(..., help="YAML recipe (configs/lm-dpo.yaml) or a first key=value override."),
    overrides: list[str] | None = typer.Argument(None, help=PREF_OVERRIDES),
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
):
    """Tune the policy in model.init_from on preference pairs with DPO (dpo.loss sigmoid/hinge/ipo, or the
    reference-free simpo/orpo; dpo.beta); logs implicit reward accuracy and margins."""
    _train("dpo", config, overrides, resume, overwrite)


@lm_app.command()
def ppo(
    config: str = typer.Argument(..., help="YAML recipe (configs/lm-ppo.yaml) or a first key=value override."),
    overrides: list[str] | None = typer.Argument(
        None, help="policy=RUN reward=RUN (short for ppo.policy, ppo.reward) and key=value overrides."
    ),
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
):
    """Tune a policy against a reward model with PPO (rollouts, per-token KL to the reference, GAE, clipped
    updates); logs reward, KL, entropy, clip fraction and value loss per iteration."""
    from modelcycle.api import train_ppo

    path, overrides = split_config(config, overrides)
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
                + "".join(f"; {kind} {value:.3f}" for kind, value in metrics["accuracy_by_kind"].items())
            )
        return
    result = compare(run, against, reward=reward, data=data, samples=samples)
    if as_json:
        stdout.print_json(json.dumps({k: result[k] for k in ("win_rate", "mean_reward", "baseline_reward", "kl")}))
        return
    table = Table(title=f"{run} against {against} ({result['num_prompts']} held-out prompts, {samples} answers each)")
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
