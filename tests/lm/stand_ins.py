"""Tiny random stand-ins of the models users bring, built at test time (no network): a Qwen2
"base" (ChatML template, eos ``<|endoftext|>``), a Qwen2 "instruct" (eos ``<|im_end|>``, saved in
bf16) and a Llama with Llama-3's template (``<|eot_id|>`` closes turns, eos ``<|end_of_text|>``).
Each gets a byte-level BPE trained with ``tokenizers`` on a few sentences, and a random 2-layer,
width-32 model of that vocabulary, saved as ``save_pretrained`` writes a downloaded folder.
``tests/lm/conftest.py`` writes them once a session (the ``standins`` fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SENTENCES = [
    "The for statement iterates over the items of a sequence.",
    "A while loop repeats as long as its condition is true.",
    "Functions return a value with the return statement.",
    "You are a helpful assistant. What does it do? Say hi.",
]
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# name -> (architecture, special tokens, eos, pad, bos, template, dtype, the turn end expected)
STANDINS = {
    "qwen2-base": ("qwen2", QWEN_SPECIALS, "<|endoftext|>", "<|endoftext|>", None, QWEN_TEMPLATE, None, "<|im_end|>"),
    "qwen2-instruct": (
        *("qwen2", QWEN_SPECIALS, "<|im_end|>", "<|endoftext|>", None, QWEN_TEMPLATE, torch.bfloat16, "<|im_end|>"),
    ),
    "llama3": (
        *("llama", LLAMA_SPECIALS, "<|end_of_text|>", None, "<|begin_of_text|>", LLAMA3_TEMPLATE, None, "<|eot_id|>"),
    ),
}


def make_tokenizer(specials: list[str], eos: str, pad: str | None, bos: str | None, template: str | None):
    """A byte-level BPE trained on ``SENTENCES`` with ``specials``, as transformers wraps it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(SENTENCES * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token=eos,
        pad_token=pad,
        bos_token=bos,
        additional_special_tokens=[t for t in specials if t not in (eos, pad, bos)],
        chat_template=template,
        model_max_length=128,
    )


def make_model(kind: str, tokenizer, eos: str, seed: int = 0):
    """A random 2-layer, width-32 Qwen2 or Llama of ``tokenizer``'s vocabulary."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[
        kind
    ]
    eos_id = tokenizer.convert_tokens_to_ids(eos)
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, bos_token_id=tokenizer.bos_token_id)
    return model.eval()


def write_standin(name: str, folder: Path, template: str | None = "from STANDINS") -> Path:
    """The stand-in ``name`` as a downloaded Hugging Face folder (config, safetensors, tokenizer)."""
    kind, specials, eos, pad, bos, own_template, dtype, _ = STANDINS[name]
    tokenizer = make_tokenizer(specials, eos, pad, bos, own_template if template == "from STANDINS" else template)
    model = make_model(kind, tokenizer, eos)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings["unk_token"] = None  # as Qwen and Llama 3 ship it (Qwen2's class would make <|endoftext|> unk)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder
