"""Supervised fine-tuning (run.task=sft): conversations rendered with the model's chat template,
next-token loss on the assistant's tokens only (their end-of-turn token included, so the model
learns to stop), full fine-tuning or LoRA; the step is pretraining's (tasks/lm.py).

``val_loss`` is therefore the held-out *answer* loss: what `modelcycle evaluate` reports as
``answer_loss`` and what the quality gate compares against the pretrained base.
"""

from __future__ import annotations

from modelcycle.config import Config
from modelcycle.data.lm_data import EncodedChats, chat_rows, encode_chats, lm_loader, read_conversations
from modelcycle.engine import distributed
from modelcycle.errors import ConfigError
from modelcycle.lm.model import package_writer
from modelcycle.progress import info, warn
from modelcycle.tasks.lm import LMSetup, NextTokenTask, check_files, package_meta, prepare_model, sample_callbacks


def chats(files: list[str], tokenizer, length: int) -> EncodedChats:
    """Every file's conversations, tokenised; how many were cut or dropped is reported once."""
    if tokenizer.chat_template is None:
        raise ConfigError(
            "the tokenizer has no chat template; use a tokenizer made by `modelcycle lm tokenizer` "
            "(ChatML) or a model folder whose tokenizer_config.json carries one"
        )
    conversations = [c for f in files for c in read_conversations(f)]
    encoded = encode_chats(tokenizer, conversations, length)
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
    check_files(config)
    built = prepare_model(config)
    t, lm = config.train, config.lm
    world = distributed.world_size()
    distributed.split_batch(t.batch_size, world)
    shard = {"rank": distributed.rank(), "world": world, "seed": t.seed}
    tokenizer = built.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train = chat_rows(chats(lm.train_files, tokenizer, lm.context_length), lm.context_length, lm.packing)
    train_loader = lm_loader(train, pad, t.batch_size, train=True, **shard)
    val_loader = None
    if lm.val_files:
        val = chat_rows(chats(lm.val_files, tokenizer, lm.context_length), lm.context_length, packing=False)
        val_loader = lm_loader(val, pad, config.eval.batch_size, train=False, **shard)
    info(f"fine-tuning on {len(train):,} {'packed sequences' if lm.packing else 'conversations'}")
    return LMSetup(
        NextTokenTask(),
        built.model,
        train_loader,
        val_loader,
        package_meta(config, built, "sft"),
        package_writer(built.model, tokenizer, built.base),
        sample_callbacks(config, tokenizer, chat=True),
    )
