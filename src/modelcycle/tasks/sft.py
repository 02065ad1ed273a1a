"""Supervised fine-tuning (run.task=sft): conversations rendered with the model's chat template,
next-token loss on the assistant's tokens only (their end-of-turn token included, so the model
learns to stop: the one the chat template closes answers with, or ``lm.end_of_turn``), full
fine-tuning or LoRA; the step is pretraining's (tasks/lm.py).

``val_loss`` is therefore the held-out *answer* loss: what `modelcycle evaluate` reports as
``answer_loss`` and what the quality gate compares against the pretrained base.
"""

from __future__ import annotations

from modelcycle.config import Config
from modelcycle.data.lm_data import EncodedChats, chat_rows, encode_chats, read_conversations
from modelcycle.errors import ConfigError
from modelcycle.progress import info, warn
from modelcycle.tasks.lm import LM_PLUGIN_FIELDS, LMSetup, language_setup
from modelcycle.tasks.plugin import TaskPlugin, parts_of


def chats(files: list[str], tokenizer, length: int, end_of_turn: str | None = None) -> EncodedChats:
    """Every file's conversations, tokenised, each answer closed by the end of turn
    (``end_of_turn``, else the chat template's); how many were cut or dropped is reported once."""
    if tokenizer.chat_template is None:
        raise ConfigError(
            "the tokenizer has no chat template; use a tokenizer made by `modelcycle lm tokenizer` "
            "(ChatML) or a model folder whose tokenizer_config.json carries one"
        )
    conversations = [c for f in files for c in read_conversations(f)]
    encoded = encode_chats(tokenizer, conversations, length, end_of_turn)
    where = ", ".join(files)
    if encoded.truncated:
        warn(
            f"{where}: {encoded.truncated} of {len(conversations)} conversations are longer than "
            f"lm.context_length={length} tokens and were cut to it"
            + (f"; {encoded.dropped} lost every assistant token and were left out" if encoded.dropped else "")
        )
    if not encoded.rows:
        raise ConfigError(f"{where}: no conversation has an assistant token within lm.context_length={length}")
    return encoded


def setup(config: Config) -> LMSetup:
    """Tokenised conversations, model (full or LoRA) and task for an SFT run."""
    lm = config.lm

    def rows(files: list[str], tokenizer, train: bool, end: str | None) -> list[dict]:
        packing = lm.packing and train  # held-out answers are scored one conversation a row
        encoded = chat_rows(chats(files, tokenizer, lm.context_length, end), lm.context_length, packing)
        if train:
            info(f"fine-tuning on {len(encoded):,} {'packed sequences' if packing else 'conversations'}")
        return encoded

    return language_setup(config, "sft", rows)


PLUGIN = TaskPlugin(
    name="sft",
    setup=lambda config, ctx: parts_of(setup(config)),
    **LM_PLUGIN_FIELDS,
    capabilities=frozenset({"chat"}),
    opens_foreign=("hf_adapter",),  # a bare peft adapter is a chat fine-tune: its merged package records sft
    description="supervised fine-tuning on conversations (loss on the assistant's tokens)",
)
