"""Text classification data: JSONL files of ``{"text": ..., "label": ...}``, tokenised once and
padded per batch.

``data.root`` is a folder holding ``train.jsonl`` and, optionally, ``val.jsonl`` and ``test.jsonl``.
Every line of every file is checked before anything trains, and all problems are reported with
file and line at once, because a bad line found an hour into training costs the hour. The classes
are the sorted train labels, so the same files always give the same class indices; a label that
appears only in val or test is an error (the model could never predict it).

Texts are tokenised once, when the loader is made, and padded per batch to the longest text in
it rather than to ``data.max_length``: most paragraphs are far shorter than the limit and an
encoder's cost grows with the padded length. The training loader draws its order from the same
:class:`EpochSampler` as images, so a text run resumes exactly too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from modelcycle.data.datasets import memory_loader
from modelcycle.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
SHOWN = 5  # problems listed per file; the rest are counted
LINE_FORMAT = 'each line must be one JSON object such as {"text": "some words", "label": "a class name"}'


@dataclass(frozen=True)
class Record:
    text: str
    label: str
    line: int


def read_jsonl(path: Path) -> list[Record]:
    """The file's records, or one DataError listing every bad line (JSON, keys, empty text)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; {LINE_FORMAT}")
    records, problems = [], []
    for number, record in json_records(path, problems):
        problem = _problem(record)
        if problem:
            problems.append(f"{path}:{number}: {problem}")
        else:
            records.append(Record(record["text"], record["label"], number))
    if problems:
        refuse_lines(path, problems, LINE_FORMAT + "; fix or delete these lines")
    if not records:
        raise DataError(f"{path} holds no examples; {LINE_FORMAT}")
    return records


def json_records(path: Path, problems: list[str]) -> Iterator[tuple[int, object]]:
    """(line number, decoded JSON value) for each non-blank line; a line that is not UTF-8 or not
    JSON is added to ``problems`` as ``file:line: what`` instead, so a caller reports them all."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                problems.append(f"{path}:{number}: not UTF-8 text")
                continue
            if not line.strip():
                continue  # blank lines (a trailing newline, a separator) carry nothing
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})")


def _problem(record: object) -> str | None:
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    for key in ("text", "label"):
        if key not in record:
            return f'no "{key}" key (keys: {", ".join(map(str, record)) or "none"})'
        if not isinstance(record[key], str):
            return f'"{key}" is a {type(record[key]).__name__}, not a string (write it in quotes)'
        if not record[key].strip():
            return f'"{key}" is empty'
    return None


def refuse_lines(path: Path, problems: list[str], what_to_do: str) -> None:
    more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    raise DataError(
        f"{path}: {len(problems)} bad line{'s' * (len(problems) > 1)}:\n  "
        + "\n  ".join(problems[:SHOWN])
        + more
        + f"\n{what_to_do}"
    )


def labelled(records: list[Record], classes: list[str], path: Path) -> list[tuple[str, int]]:
    """(text, class index) pairs; a label outside ``classes`` is an error naming its lines."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = [f"{path}:{r.line}: label {r.label!r}" for r in records if r.label not in index]
    if unknown:
        refuse_lines(
            path,
            unknown,
            f"the classes are the train labels ({', '.join(classes)}): a class needs training examples, "
            "so add some to train.jsonl or remove these lines",
        )
    return [(r.text, index[r.label]) for r in records]


@dataclass
class TextData:
    root: Path
    classes: list[str]
    splits: dict[str, list[tuple[str, int]]]

    @classmethod
    def open(cls, root: str | Path) -> TextData:
        root = Path(root)
        if not (root / "train.jsonl").is_file():
            raise DataError(
                f"{root} has no train.jsonl; with run.task=text_classify, data.root is a folder holding train.jsonl "
                f"and val.jsonl ({LINE_FORMAT}); `modelcycle datasets pydoc-topics --out data/pydoc-topics` "
                "writes one"
            )
        train = read_jsonl(root / "train.jsonl")
        classes = sorted({r.label for r in train})
        if len(classes) < 2:
            raise DataError(
                f"{root / 'train.jsonl'}: every example has the label {classes[0]!r}; a classifier needs two or more"
            )
        splits = {"train": labelled(train, classes, root / "train.jsonl")}
        for name in SPLITS[1:]:
            path = root / f"{name}.jsonl"
            if path.is_file():
                splits[name] = labelled(read_jsonl(path), classes, path)
        return cls(root, classes, splits)

    def has_split(self, name: str) -> bool:
        return name in self.splits

    def split(self, name: str) -> list[tuple[str, int]]:
        if name not in self.splits:
            raise DataError(f"{self.root} has no {name}.jsonl; splits here: {', '.join(self.splits)}")
        return self.splits[name]


# ---------------------------------------------------------------- tokens and batches


class TokenizedTexts(Dataset):
    def __init__(self, ids: list[list[int]], labels: list[int]):
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[list[int], int]:
        index = key[0] if isinstance(key, tuple) else key  # EpochSampler adds a seed texts do not use
        return self.ids[index], self.labels[index]


class PadCollate:
    """Pads a batch to its longest text; the attention mask tells the model which tokens are real."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[tuple[list[int], int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        longest = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, (ids, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}, torch.tensor([label for _, label in batch])


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids with the model's special tokens, cut to ``max_length``."""
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def text_loader(
    examples: list[tuple[str, int]],
    tokenizer,
    max_length: int,
    batch_size: int,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """Batches of ``({"input_ids", "attention_mask"}, labels)``; no worker processes: the tokens
    are in memory and padding a batch takes microseconds."""
    if tokenizer.pad_token_id is None:
        raise ConfigError("the model's tokenizer has no padding token; choose a model whose tokenizer defines one")
    dataset = TokenizedTexts(encode(tokenizer, [t for t, _ in examples], max_length), [y for _, y in examples])
    return memory_loader(dataset, PadCollate(tokenizer.pad_token_id), batch_size, train, seed, rank, world)
