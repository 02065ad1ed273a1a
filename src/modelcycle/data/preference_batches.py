"""Preference pairs as token batches: the prompt through the tokenizer's chat template, each
answer after it and closed with the end-of-turn token (the one the chat template closes answers
with, or ``lm.end_of_turn``: ``lm/end_of_turn.py``), chosen and rejected rows stacked in one batch
so a model scores both in one forward pass.

Only the answer tokens differ between the two rows of a pair; ``response_mask`` marks them, so the
DPO task sums log-probabilities over exactly the tokens the preference is about.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from modelcycle.data.datasets import memory_loader
from modelcycle.data.preferences import Pair
from modelcycle.errors import ConfigError
from modelcycle.lm.chat_template import chat_ids, encode_text
from modelcycle.lm.end_of_turn import turn_end


def is_text_pair_encoder(tokenizer) -> bool:
    """A BERT-style tokenizer (``[CLS] prompt [SEP] answer [SEP]``): no chat template, no
    end-of-turn token, but a classifier token for the sequence-classification head to read."""
    return (
        not getattr(tokenizer, "chat_template", None)
        and tokenizer.eos_token_id is None
        and getattr(tokenizer, "cls_token_id", None) is not None
        and getattr(tokenizer, "sep_token_id", None) is not None
    )


def prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The prompt rendered by the tokenizer's chat template up to the assistant's turn; a
    tokenizer without a template (a plain pretrained LM) gets the turns' text on lines, and an
    encoder's (a sentence model as reward model) the text pair's first half, ``[CLS] ... [SEP]``."""
    if getattr(tokenizer, "chat_template", None):  # content as text: no message forges a turn
        ids = chat_ids(tokenizer, messages, add_generation_prompt=True)
    else:
        ids = encode_text(tokenizer, "".join(m["content"] + "\n" for m in messages))
    return [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id] if is_text_pair_encoder(tokenizer) else ids


def answer_ids(tokenizer, text: str, end_of_turn: str | None = None) -> list[int]:
    """The answer's tokens closed by the end-of-turn token (``end_of_turn`` or the chat
    template's), as the model is to produce them (an encoder's closed by its separator)."""
    ids = encode_text(tokenizer, text)  # a control token written in the answer stays characters
    if is_text_pair_encoder(tokenizer):
        end = tokenizer.sep_token_id
    else:
        closing = turn_end(tokenizer, end_of_turn)
        end = closing.id if closing else None
    return ids + [end] if end is not None else ids


def fit(prompt: list[int], answers: list[list[int]], max_length: int) -> tuple[list[int], list[list[int]]]:
    """Cut to ``max_length`` tokens: answers keep their beginning, the prompt its end (where the
    question and the assistant marker are); the prompt gives up at most half the budget."""
    longest = max(len(a) for a in answers)
    if len(prompt) + longest <= max_length:
        return prompt, answers
    keep = min(len(prompt), max(max_length - longest, max_length // 2))
    prompt = prompt[len(prompt) - keep :]
    return prompt, [a[: max_length - keep] for a in answers]


@dataclass
class EncodedPair:
    chosen: list[int]
    rejected: list[int]
    prompt_length: int
    margin: float


def encode_pairs(pairs: list[Pair], tokenizer, max_length: int, end_of_turn: str | None = None) -> list[EncodedPair]:
    out = []
    for pair in pairs:
        prompt, (chosen, rejected) = fit(
            prompt_ids(tokenizer, pair.messages),
            [answer_ids(tokenizer, pair.chosen, end_of_turn), answer_ids(tokenizer, pair.rejected, end_of_turn)],
            max_length,
        )
        out.append(EncodedPair(prompt + chosen, prompt + rejected, len(prompt), pair.margin or 0.0))
    return out


class PairDataset(Dataset):
    def __init__(self, pairs: list[EncodedPair]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[int, EncodedPair]:
        index = key[0] if isinstance(key, tuple) else key  # EpochSampler adds a seed pairs do not use
        return index, self.pairs[index]


class PairCollate:
    """``input_ids``/``attention_mask``/``response_mask`` of shape (2B, L), the B chosen rows first,
    right-padded; ``margin`` and ``index`` (the pairs' places in the dataset) of shape (B,)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[tuple[int, EncodedPair]]) -> dict[str, torch.Tensor]:
        rows = [p.chosen for _, p in batch] + [p.rejected for _, p in batch]
        starts = [p.prompt_length for _, p in batch] * 2
        longest = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), longest), dtype=torch.long)
        response = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention[i, : len(row)] = 1
            response[i, start : len(row)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "response_mask": response,
            "margin": torch.tensor([p.margin for _, p in batch], dtype=torch.float32),
            "index": torch.tensor([i for i, _ in batch]),
        }


def pair_loader(
    pairs: list[EncodedPair], tokenizer, batch_size: int, train: bool, seed: int = 0, rank: int = 0, world: int = 1
) -> DataLoader:
    """Batches of :class:`PairCollate`; the order comes from the engine's EpochSampler, so a run
    resumes exactly, and no worker processes (the tokens are in memory). Padding is masked out
    (attention and response masks), so a tokenizer without a padding token (Llama 3's) pads with
    its eos token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ConfigError(
            "the model's tokenizer has neither a padding token nor an eos token to pad a batch of pairs with; "
            "set pad_token in its tokenizer_config.json"
        )
    return memory_loader(PairDataset(pairs), PairCollate(pad), batch_size, train, seed, rank, world)
