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
