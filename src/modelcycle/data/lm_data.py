"""Language-model data: documents packed into fixed-length sequences for pretraining, and
conversations (chat ``messages`` or Alpaca ``instruction``/``input``/``output``) tokenised with
the model's chat template, loss on the assistant's tokens only, for supervised fine-tuning.

Text files hold documents separated by a blank line; JSONL files hold one ``{"text": ...}``
document a line. Every JSONL line is checked before anything trains and every problem is
reported with file and line at once (as for text classification, data/text.py).

Assistant tokens are found from character offsets in the text the chat template renders, not
by rebuilding the template piece by piece, so any model's template (ChatML, Qwen's, Llama's)
gets the same treatment: a token is trained on when it starts inside an assistant message or
in the end-of-turn token that closes it, so the model learns to stop. Message content is
tokenised as text: a control token written in a message is not a turn (``lm/chat_template.py``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from modelcycle.data.datasets import memory_loader
from modelcycle.data.text import json_records, refuse_lines
from modelcycle.errors import DataError
from modelcycle.lm.chat_template import encode_chat
from modelcycle.lm.tokenizer import ENDOFTEXT

IGNORE = -100  # label of a token that is not trained on (cross_entropy's ignore_index)
CHAT_FORMAT = (
    'each line must be one JSON object: {"messages": [{"role": "user", "content": ...}, {"role": "assistant", '
    '"content": ...}]} or {"instruction": ..., "input": ..., "output": ...}'
)
TEXT_FORMAT = 'each line must be one JSON object such as {"text": "a document"}'


def _jsonl(path: Path, check, what_to_do: str) -> list:
    """``check(record) -> (value, problem)`` for every line; one DataError lists the bad lines."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; {what_to_do}")
    values, problems = [], []
    for number, record in json_records(path, problems):
        value, problem = check(record) if isinstance(record, dict) else (None, "not a JSON object")
        if problem:
            problems.append(f"{path}:{number}: {problem}")
        else:
            values.append(value)
    if problems:
        refuse_lines(path, problems, what_to_do + "; fix or delete these lines")
    if not values:
        raise DataError(f"{path} holds no examples; {what_to_do}")
    return values


# ---------------------------------------------------------------- pretraining text


def read_documents(path: str | Path) -> list[str]:
    path = Path(path)
    if path.suffix == ".jsonl":

        def text(record: dict):
            value = record.get("text")
            return (value, None) if isinstance(value, str) and value.strip() else (None, 'no non-empty "text" string')

        return _jsonl(path, text, TEXT_FORMAT)
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass text files (`modelcycle datasets pydocs` writes corpus.txt)")
    documents = [d.strip() for d in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace"))]
    if not any(documents):
        raise DataError(f"{path} holds no text")
    return [d for d in documents if d]


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


def _conversation(record: dict) -> tuple[list[dict] | None, str | None]:
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            return None, '"messages" must be a non-empty list of {"role", "content"} objects'
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                return None, f'message {i + 1} is not an object with "role" and "content" strings'
        if not any(m["role"] == "assistant" for m in messages):
            return None, "the conversation has no assistant turn, so there is nothing to learn from it"
        return [{"role": m["role"], "content": m["content"]} for m in messages], None
    if "instruction" in record or "output" in record:
        for key in ("instruction", "output"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                return None, f'Alpaca format: no non-empty "{key}" string'
        prompt = record["instruction"] + (f"\n\n{record['input']}" if str(record.get("input") or "").strip() else "")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}], None
    return None, f'neither "messages" nor "instruction"/"output" (keys: {", ".join(record) or "none"})'


def read_conversations(path: str | Path) -> list[list[dict]]:
    """Conversations as message lists; Alpaca records become one user and one assistant turn."""
    return _jsonl(Path(path), _conversation, CHAT_FORMAT)


def is_chat_file(path: str | Path) -> bool:
    """Whether a data file holds conversations (else pretraining text)."""
    path = Path(path)
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                return True  # let the reader name the line
            return isinstance(record, dict) and "text" not in record
    return False


def encode_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(token ids, labels): the chat template's rendering, labels ``IGNORE`` outside assistant
    turns. Content is tokenised as text (a control token written in a message stays characters)
    and the assistant spans come from where the template put each message, so no message can
    forge a turn or move the loss mask (``lm/chat_template.py``)."""
    encoded = encode_chat(tokenizer, messages, add_generation_prompt=False)
    text, spans = encoded.text, []
    end_of_turn = tokenizer.eos_token or ""
    for index, start, end in encoded.spans:
        if messages[index]["role"] != "assistant":
            continue
        closing = text.find(end_of_turn, end) if end_of_turn else -1
        if closing >= 0 and not text[end:closing].strip():
            end = closing + len(end_of_turn)
        spans.append((start, end))
    labels = [
        token if any(a <= first < b for a, b in spans) else IGNORE
        for token, first in zip(encoded.ids, encoded.starts, strict=True)
    ]
    return encoded.ids, labels


@dataclass
class EncodedChats:
    rows: list[tuple[list[int], list[int]]]
    truncated: int  # conversations cut to the context
    dropped: int  # conversations with no assistant token left after the cut


def encode_chats(tokenizer, conversations: list[list[dict]], length: int) -> EncodedChats:
    rows, truncated, dropped = [], 0, 0
    for messages in conversations:
        ids, labels = encode_conversation(tokenizer, messages)
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
