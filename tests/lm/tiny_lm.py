"""A tiny chat model folder for the generation, chat and serving tests.

This module is the one place that builds it, so it can later come from lmcore's
tokenizer trainer and pretraining instead: a byte-level BPE tokenizer trained with
``tokenizers`` on Python's own docs (``pydoc_data.topics``) with the shared special tokens and
ChatML template, saved as a ``PreTrainedTokenizerFast``, and a small random ``LlamaForCausalLM``
saved with ``save_pretrained`` as a run's model package (``modelcycle.json`` with the sha256).
Random weights are enough: greedy decoding is deterministic, and a wide initialisation keeps
the logits far apart so cached and uncached decoding pick the same tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(vocab: int = 600, chars: int = 40_000):
    """Byte-level BPE on the first ``chars`` characters of the interpreter's own documentation,
    as a transformers tokenizer."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = "\n\n".join(topics[k] for k in sorted(topics))[:chars]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML,
    )


def build_model(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, context: int = 128, seed: int = 0):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,  # grouped-query attention, as in Llama 3 and Qwen
        max_position_embeddings=context,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    )
    return model


def write_lm_package(out: Path, model, tokenizer, task: str = "sft") -> Path:
    """The LM package layout of the shared conventions, through the project's own package writer."""
    import transformers

    from modelcycle import runs

    def hugging_face_files(folder: Path) -> None:
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(folder)
        model.generation_config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    manifest = {
        "task": task,
        "backend": "transformers",
        "metrics": {},
        "source_run": str(out.parent),
        "transformers_version": transformers.__version__,
    }
    return runs.write_package(out, model.state_dict(), manifest, extra=hugging_face_files)
