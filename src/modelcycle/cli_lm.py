"""`modelcycle lm ...`: the language-model verbs (tokenizer, pretrain, sft, merge, generate, chat,
reward, ppo, dpo), each a thin call into the Python API like the image verbs in cli.py."""

from __future__ import annotations

import typer

lm_app = typer.Typer(
    help="Language models: tokenizer -> pretrain -> sft -> reward -> ppo/dpo, and generate/chat with the result.\n\n"
    "Every model is a Hugging Face folder (config.json, model.safetensors, tokenizer.json), so a local "
    "Qwen or Llama folder works with every verb and what we train loads in transformers as it is.",
    no_args_is_help=True,
)


# ---------------------------------------------------------------- generate, chat (lm/generate.py, lm/chat.py)

MODEL_HELP = "A run folder (runs/lm-sft), its model/ package, or any local Hugging Face causal-LM folder."
MAX_NEW_HELP = "Most new tokens per answer (fewer when the prompt leaves less room in the context)."
TEMPERATURE_HELP = "0 = greedy (always the likeliest token); higher = more varied text."
TOP_K_HELP = "Sample only among the K likeliest tokens (0: no limit)."
TOP_P_HELP = "Sample only among the likeliest tokens whose probabilities add up to P (1: no limit)."
PENALTY_HELP = "Above 1 makes tokens already in the text less likely (1.1-1.3 curbs loops; 1: off)."
STOP_HELP = "Text that ends the answer (not printed); repeat the option for several."
SEED_HELP = "Seed for sampling: the same seed and prompt give the same answer."
DEVICE_HELP = "cpu, cuda, cuda:1 ... or auto (the GPU when there is one)."


def _sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop, seed):
    from modelcycle.lm.sampling import Sampling

    return Sampling(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        stop=tuple(stop or ()),
        seed=seed,
    )


@lm_app.command()
def generate(
    model: str = typer.Argument(..., help=MODEL_HELP),
    prompts: list[str] = typer.Argument(..., help="One or more prompts; several are generated as one batch."),
    max_new_tokens: int = typer.Option(128, help=MAX_NEW_HELP),
    temperature: float = typer.Option(0.7, help=TEMPERATURE_HELP),
    top_k: int = typer.Option(0, help=TOP_K_HELP),
    top_p: float = typer.Option(0.95, help=TOP_P_HELP),
    repetition_penalty: float = typer.Option(1.0, help=PENALTY_HELP),
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
    sampling = _sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop, seed)
    if chat is None:
        task = (lm.manifest or {}).get("task")
        chat = bool(getattr(lm.tokenizer, "chat_template", None)) and task != "lm"
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
    max_new_tokens: int = typer.Option(256, help=MAX_NEW_HELP),
    temperature: float = typer.Option(0.7, help=TEMPERATURE_HELP),
    top_k: int = typer.Option(0, help=TOP_K_HELP),
    top_p: float = typer.Option(0.95, help=TOP_P_HELP),
    repetition_penalty: float = typer.Option(1.0, help=PENALTY_HELP),
    stop: list[str] | None = typer.Option(None, help=STOP_HELP),
    seed: int | None = typer.Option(None, help=SEED_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
):
    """Talk with a chat model in the terminal: answers stream as they are made, the conversation is
    remembered (/reset forgets it, /exit or Ctrl-D leaves). Reads stdin line by line, so it can be piped."""
    import sys

    from modelcycle.lm.chat import ChatSession, repl
    from modelcycle.lm.load import load_lm
    from modelcycle.progress import console, info

    lm = load_lm(model, device=device)
    session = ChatSession(
        lm, _sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop, seed), system
    )
    lm.chat_ids([{"role": "user", "content": "hi"}])  # no chat template: say so before the first question

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def prompt() -> None:
        if sys.stdin.isatty():
            console.print("[bold]you>[/bold] ", end="")

    repl(session, sys.stdin, write, info, prompt)
