"""Byte-level BPE tokenizers, trained with ``tokenizers`` and saved in the Hugging Face layout
(``tokenizer.json`` + ``tokenizer_config.json`` holding the chat template), so
``transformers.AutoTokenizer.from_pretrained(folder)`` loads them as they are.

Byte-level means every string has an encoding (no unknown token): the 256 bytes are in the
base vocabulary and merges are learned on top, as in GPT-2, Llama 3 and Qwen. The special
tokens and the ChatML template follow the conventions every language-model command shares:
``<|endoftext|>`` separates documents (and is the bos token), ``<|im_end|>`` ends a turn (the
eos token, so generation stops there), ``<|pad|>`` pads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from modelcycle.errors import DataError, UserError

ENDOFTEXT, IM_START, IM_END, PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, PAD]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # the bytes and the special tokens, before any merge


def train_tokenizer(files: Sequence[str | Path], vocab: int, out: str | Path, min_frequency: int = 2):
    """Train a byte-level BPE of ``vocab`` tokens on text ``files`` and save it to ``out``;
    returns the ``transformers`` tokenizer. Fewer tokens come out when the text has too few
    distinct pairs to merge (tiny corpora)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab < MIN_VOCAB:
        raise UserError(f"--vocab {vocab}: a byte-level BPE needs at least {MIN_VOCAB} (256 bytes + special tokens)")
    paths = [Path(f) for f in files]
    if not paths:
        raise UserError("no text files given; pass one or more, e.g. data/pydocs/corpus.txt")
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path} does not exist; pass text files (`modelcycle datasets pydocs` writes corpus.txt)")
        if path.stat().st_size == 0:
            raise DataError(f"{path} is empty; a tokenizer learns its merges from text")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,  # ids 0..3, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(p) for p in paths], trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=ENDOFTEXT,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1_000_000,  # the model's context decides; no warning from the tokenizer
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(out)
    return wrapped


def load_tokenizer(folder: str | Path):
    """A tokenizer folder (ours, any Hugging Face model folder, or a Hub id in the local cache) ->
    ``transformers`` tokenizer."""
    from transformers import AutoTokenizer

    from modelcycle.models.hub import local_folder

    folder = local_folder(folder)
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise UserError(
            f"{folder} holds no tokenizer (tokenizer.json); train one with "
            "`modelcycle lm tokenizer data/pydocs/corpus.txt --vocab 4000 --out runs/tok`"
        )
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)
