"""Builders for the RLHF tests: pydocs preference pairs, and a tiny Llama "SFT policy" with a
byte-level BPE tokenizer in the project's conventions (ChatML template; <|endoftext|>,
<|im_start|>, <|im_end|> = eos, <|pad|>), built once per session.

STAND-IN: :func:`build_sft_policy` trains the tokenizer and runs a short supervised fine-tune
by hand, because part 1's tokenizer trainer and SFT task live on another branch. At merge it is
the one function to point at ``modelcycle lm tokenizer`` + ``lm sft``.
"""

from __future__ import annotations

from pathlib import Path

import torch

TRAIN_TOPICS = [
    *("for", "while", "if", "try", "with", "return", "import", "assert", "raise", "del", "pass", "break"),
    *("continue", "global", "nonlocal", "lambda", "integers", "floating", "strings", "lists", "dict", "calls"),
    *("comparisons", "booleans"),
]
VAL_TOPICS = ["yield", "class", "slicings", "shifting"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
MAX_LENGTH = 96


def write_prefs(out: Path) -> Path:
    from pydoc_data.topics import topics

    from modelcycle.data.pydocs_prefs import write_preference_pairs

    write_preference_pairs(out, {t: topics[t] for t in TRAIN_TOPICS + VAL_TOPICS}, VAL_TOPICS, seed=0)
    return out


def build_tokenizer(texts: list[str], vocab: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML,
    )


def build_sft_policy(
    folder: Path, prefs: Path, steps: int = 60, seed: int = 0, hidden: int = 64, layers: int = 2
) -> Path:
    """Tokenizer + tiny LlamaForCausalLM, fine-tuned on (prompt, chosen) for ``steps`` steps."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from modelcycle.data.preference_batches import encode_pairs, pair_loader
    from modelcycle.data.preferences import read_pairs
    from modelcycle.tasks.preference_loss import response_logps

    pairs = read_pairs(prefs / "prefs-train.jsonl")
    tokenizer = build_tokenizer([p.chosen for p in pairs])
    torch.manual_seed(seed)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIALS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|pad|>"],
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    loader = pair_loader(encode_pairs(pairs, tokenizer, MAX_LENGTH), tokenizer, 16, train=True, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    done = 0
    while done < steps:
        loader.sampler.set_epoch(done)
        for batch in loader:
            half = len(batch["index"])  # the chosen rows only: supervised on the good answers
            logits = model(input_ids=batch["input_ids"][:half], attention_mask=batch["attention_mask"][:half]).logits
            total, count = response_logps(logits, batch["input_ids"][:half], batch["response_mask"][:half])
            loss = -total.sum() / count.sum()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            done += 1
            if done >= steps:
                break
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|pad|>"],
        bos_token_id=ids["<|endoftext|>"],
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
