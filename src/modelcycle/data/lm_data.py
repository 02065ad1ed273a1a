"""Language-model data: documents packed into fixed-length sequences for pretraining, and
conversations (chat ``messages`` or Alpaca ``instruction``/``input``/``output``) tokenised with
the model's chat template, loss on the assistant's tokens only, for supervised fine-tuning.

The records are read by data/formats.py: files or folders of text, JSONL, JSON arrays, Parquet
or ``datasets.save_to_disk`` folders, in the formats people have (chat messages, ShareGPT,
Alpaca, prompt/completion), each told apart per record, every bad record named with its file and
line before anything trains.

Assistant tokens are found from character offsets in the text the chat template renders, not
by rebuilding the template piece by piece, so any model's template (ChatML, Qwen's, Llama's)
gets the same treatment: a token is trained on when it starts inside an assistant message or
in the end-of-turn token that closes it (the template's own, not assumed to be ``eos_token``:
``lm/end_of_turn.py``), so the model learns to stop. Message content is
tokenised as text: a control token written in a message is not a turn (``lm/chat_template.py``).
An assistant turn that calls a tool is trained whole, as the template writes it: its content,
its calls (as text too) and its end of turn (``lm/tool_turns.py``); a record's ``tools`` are
given to the template.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from modelcycle.data.datasets import memory_loader
from modelcycle.data.formats import is_chat_file as is_chat_file  # the readers, where callers found them
from modelcycle.data.formats import read_conversations as read_conversations
from modelcycle.data.formats import read_documents
from modelcycle.errors import DataError, UserError
from modelcycle.lm.chat_template import encode_chat
from modelcycle.lm.end_of_turn import TurnEnd, turn_end
from modelcycle.lm.tokenizer import ENDOFTEXT
from modelcycle.lm.tool_turns import tool_turns

IGNORE = -100  # label of a token that is not trained on (cross_entropy's ignore_index)


# ---------------------------------------------------------------- pretraining text


def document_separator(tokenizer) -> int:
    """``<|endoftext|>`` where the vocabulary has it (ours, Qwen), else the eos token."""
    token = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    return token if isinstance(token, int) and token != tokenizer.unk_token_id else tokenizer.eos_token_id


def token_stream(files: list[str], tokenizer) -> list[int]:
    """Every document's tokens, each followed by the separator, in file order."""
    separator = document_separator(tokenizer)
    documents = [d for f in files for d in read_documents(f)]
    stream: list[int] = []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(separator)
    return stream


def pack(stream: list[int], length: int, where: str) -> torch.Tensor:
    """``[sequences, length]`` cut from the stream (documents run across sequence borders, as
    in GPT-style pretraining; the short tail is dropped)."""
    count = len(stream) // length
    if count == 0:
        raise DataError(
            f"{where} holds {len(stream)} tokens, fewer than one sequence of lm.context_length={length}; "
            "add text or lower lm.context_length"
        )
    return torch.tensor(stream[: count * length], dtype=torch.long).view(count, length)


class Sequences(Dataset):
    def __init__(self, rows: list[dict[str, torch.Tensor]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        return self.rows[key[0] if isinstance(key, tuple) else key]  # EpochSampler adds a seed we do not use


def packed_rows(chunks: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": row, "labels": row} for row in chunks]


# ---------------------------------------------------------------- conversations


def encode_conversation(tokenizer, messages: list[dict], end: TurnEnd | None = None) -> tuple[list[int], list[int]]:
    """(token ids, labels): the chat template's rendering, labels ``IGNORE`` outside assistant
    turns and the end-of-turn token that closes each (``end``: by default the one the template
    writes, ``lm/end_of_turn.py``; where the template writes none after an answer, ``end`` is
    inserted there). Content is tokenised as text (a control token written in a message stays
    characters) and the assistant spans come from where the template put each message, so no
    message can forge a turn or move the loss mask (``lm/chat_template.py``). A turn that calls a
    tool is trained whole, as the template writes it (``lm/tool_turns.py``), its calls as text too;
    the conversation's ``tools`` (a :class:`Conversation`'s) are given to the template."""
    end = end or turn_end(tokenizer)
    tools = getattr(messages, "tools", None)
    encoded = encode_chat(tokenizer, messages, add_generation_prompt=False, tools=tools)
    text, spans = encoded.text, []
    calls = tool_turns(tokenizer, messages, text, end, tools=tools)
    for index, start, stop in encoded.spans:
        if messages[index]["role"] != "assistant" or index in calls:
            continue
        closing = len(text) - len(text[stop:].lstrip())  # whitespace may sit between answer and end of turn
        closed = end is not None and text.startswith(end.token, closing)
        spans.append((start, closing + len(end.token) if closed else stop, closed))
    spans = sorted(spans + list(calls.values()))
    inserts = [stop for _, stop, closed in spans if end is not None and not closed]
    ids, starts = list(encoded.ids), list(encoded.starts)
    labels = [
        token if any(a <= first < b for a, b, _ in spans) else IGNORE for token, first in zip(ids, starts, strict=True)
    ]
    for position in reversed(inserts):  # after the answer's last token, before the template's text
        at = bisect.bisect_left(starts, position)
        ids.insert(at, end.id)
        labels.insert(at, end.id)
        starts.insert(at, position)
    return ids, labels


@dataclass
class EncodedChats:
    rows: list[tuple[list[int], list[int]]]
    truncated: int  # conversations cut to the context
    dropped: int  # conversations with no assistant token left after the cut


def encode_chats(
    tokenizer, conversations: list[list[dict]], length: int, end_of_turn: str | None = None
) -> EncodedChats:
    """Every conversation encoded; ``end_of_turn`` (``lm.end_of_turn``) overrides the template's."""
    rows, truncated, dropped = [], 0, 0
    end = turn_end(tokenizer, end_of_turn)
    for messages in conversations:
        try:
            ids, labels = encode_conversation(tokenizer, messages, end)
        except UserError as exc:  # a conversation read from a file: say where
            if not getattr(messages, "where", ""):
                raise
            raise type(exc)(f"{messages.where}: {exc}") from None
        if len(ids) > length:
            truncated += 1
            ids, labels = ids[:length], labels[:length]
        if all(label == IGNORE for label in labels[1:]):
            dropped += 1
            continue
        rows.append((ids, labels))
    return EncodedChats(rows, truncated, dropped)


def chat_rows(encoded: EncodedChats, length: int, packing: bool) -> list[dict[str, torch.Tensor]]:
    """One row per conversation, or with ``packing`` conversations laid end to end (whole, in
    order) until the next would not fit; padding is added per batch by :class:`PadBatch`."""
    pieces = encoded.rows
    if packing:
        packed: list[tuple[list[int], list[int]]] = []
        for ids, labels in pieces:
            if packed and len(packed[-1][0]) + len(ids) <= length:
                packed[-1] = (packed[-1][0] + ids, packed[-1][1] + labels)
            else:
                packed.append((list(ids), list(labels)))
        pieces = packed
    return [{"input_ids": torch.tensor(i), "labels": torch.tensor(y)} for i, y in pieces]


class PadBatch:
    """Right-pads a batch to its longest row; padding is masked out and never trained on."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        if all(len(r["input_ids"]) == longest for r in rows):  # packed pretraining: nothing to pad or mask
            return {
                "input_ids": torch.stack([r["input_ids"] for r in rows]),
                "labels": torch.stack([r["labels"] for r in rows]),
            }
        batch = {
            "input_ids": torch.full((len(rows), longest), self.pad_id, dtype=torch.long),
            "labels": torch.full((len(rows), longest), IGNORE, dtype=torch.long),
            "attention_mask": torch.zeros((len(rows), longest), dtype=torch.long),
        }
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            batch["input_ids"][i, :n] = row["input_ids"]
            batch["labels"][i, :n] = row["labels"]
            batch["attention_mask"][i, :n] = 1
        return batch


def lm_loader(
    rows: list[dict[str, torch.Tensor]],
    pad_id: int,
    batch_size: int,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """Batches of ``{"input_ids", "labels"[, "attention_mask"]}``, drawn by the engine's
    resumable sampler; no worker processes (the tokens are already in memory)."""
    return memory_loader(Sequences(rows), PadBatch(pad_id), batch_size, train, seed, rank, world)
