"""Language-model data by file or folder, in the formats people have, read for one stage.

Each stage reads its kinds of record (data/record_formats.py): pretraining text documents; SFT
conversations (chat messages, ShareGPT, Alpaca, prompt/completion); the reward model and DPO
preference pairs (TRL's prompt/chosen/rejected, ShareGPT and Alpaca pairs); PPO prompts (prompt
only, or the prompt of any conversation or pair). A source is a file or a folder in any
container of data/sources.py.

The format is told per record by its keys; each file's formats are printed with its count, and
the first record's format is what the file "looks like". A record that fits no format, or a
format the stage does not read, or that its format refuses, is an error: every one is collected
(the first few shown, the rest counted) and reported at once with its file and line (or row)
and the format the file looked like. Nothing is skipped silently; a preference pair whose two
answers are the same text is skipped with a warning that counts them, as before.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from modelcycle.data.record_formats import Conversation, Format, Pair, detect, given
from modelcycle.data.sources import DataFile, data_files, records
from modelcycle.errors import DataError
from modelcycle.progress import info, warn

SHOWN = 5  # problems listed per file; the rest are counted


@dataclass(frozen=True)
class Stage:
    name: str  # as in messages: "SFT"
    nouns: tuple[str, str]  # what it reads, one and many: ("conversation", "conversations")
    kinds: tuple[str, ...]  # the record kinds it reads (record_formats.Format.kind)
    formats: str  # the formats it reads, for messages
    doc: str = "docs/lm.md"  # where they are shown

    def count(self, n: int) -> str:
        return f"{n:,} {self.nouns[n != 1]}"


DOCUMENTS = Stage("pretraining", ("document", "documents"), ("text",), 'text files, {"text": ...} records')
CONVERSATIONS = Stage(
    "SFT",
    ("conversation", "conversations"),
    ("conversation",),
    'chat {"messages": [...]}, ShareGPT {"conversations": [...]}, Alpaca {"instruction", "input", "output"}, '
    '{"prompt", "completion"}',
)
PAIRS = Stage(
    "the reward model and DPO",
    ("preference pair", "preference pairs"),
    ("pair",),
    '{"prompt", "chosen", "rejected"} (strings or message lists, or whole conversations in chosen and rejected), '
    'ShareGPT pairs {"conversations", "chosen", "rejected"}, Alpaca pairs {"instruction", "chosen", "rejected"}',
    "docs/lm-rlhf.md",
)
PROMPTS = Stage(
    "PPO",
    ("prompt", "prompts"),
    ("prompt", "conversation", "pair"),
    '{"prompt": ...}, or conversations and preference pairs (their prompts)',
    "docs/lm-rlhf.md",
)
READERS = {"text": DOCUMENTS, "conversation": CONVERSATIONS, "pair": PAIRS, "prompt": PROMPTS}


class _Problems:
    """Problems of one file: the first SHOWN kept, the rest counted."""

    def __init__(self):
        self.shown: list[str] = []
        self.count = 0

    def append(self, problem: str) -> None:
        self.count += 1
        if len(self.shown) < SHOWN:
            self.shown.append(problem)


def _refuse(file: DataFile, problems: _Problems, first: tuple[Format | None, int] | None, stage: Stage):
    many = problems.count > 1
    looks = ""
    if first is not None:
        shape = "fits no format" if first[0] is None else f"looks like {first[0].name} ({first[0].keys})"
        looks = f"; it is {file.described} whose first record ({file.unit} {first[1]}) {shape}"
    more = f"\n  ... and {problems.count - SHOWN} more" if problems.count > SHOWN else ""
    raise DataError(
        f"{file.path}: {problems.count} bad {file.unit}{'s' * many}{looks}:\n  "
        + "\n  ".join(problems.shown)
        + more
        + f"\nthe formats for {stage.name}: {stage.formats} ({stage.doc}); "
        + f"fix or delete {'these' if many else 'this'} {file.unit}{'s' * many}"
    )


def _why_not(fmt: Format | None, record: object, stage: Stage) -> str:
    if fmt is None:
        if not isinstance(record, dict):
            return f"a JSON {type(record).__name__}, not an object"
        return f"fits no data format (keys: {', '.join(map(str, given(record))) or 'none'})"
    return f"a {fmt.name} record ({fmt.keys}): data for {READERS[fmt.kind].name}, not for {stage.name}"


def _value(fmt: Format, value: object, stage: Stage, number: int) -> object:
    """What the stage takes of a record read by its format."""
    if stage is PROMPTS and fmt.kind in ("conversation", "prompt") and any("tool_calls" in m for m in value):
        raise ValueError(
            "an assistant turn calls a tool (tool_calls): SFT trains such conversations, but PPO's prompts are "
            "read as text and its answers carry no tool calls yet; leave such records out of PPO's data"
        )
    if stage is PROMPTS and getattr(value, "tools", None):
        raise ValueError(
            '"tools" (tool definitions for the chat template): SFT renders them, but PPO prompts are rendered '
            "without them; drop the key, or leave such records out of PPO's data"
        )
    if fmt.kind == "pair":
        return replace(value, line=number) if stage is PAIRS else value.messages
    if stage is PROMPTS and fmt.kind == "conversation":
        last = max(i for i, m in enumerate(value) if m["role"] == "assistant")
        if last == 0:
            raise ValueError("the conversation opens with the assistant, so it holds no prompt")
        return value[:last]
    return value


def read_file(file: DataFile, stage: Stage) -> list:
    values, problems, counts, same = [], _Problems(), Counter(), []
    first: tuple[Format | None, int] | None = None
    for number, record in records(file, problems):
        fmt = detect(record)
        first = first or (fmt, number)
        try:
            if fmt is None or fmt.kind not in stage.kinds:
                raise ValueError(_why_not(fmt, record, stage))
            value = _value(fmt, fmt.read(record), stage, number)
        except ValueError as exc:
            problems.append(f"{file.where(number)}: {exc}")
            continue
        if stage is CONVERSATIONS:  # where it was read, for problems found when it is tokenised
            value = Conversation(value, getattr(value, "tools", None), file.where(number))
        if isinstance(value, Pair) and value.chosen.strip() == value.rejected.strip():
            same.append(number)
            continue
        counts[fmt.name] += 1
        values.append(value)
    if problems.count:
        _refuse(file, problems, first, stage)
    if same:
        shown = ", ".join(map(str, same[:SHOWN])) + (f" and {len(same) - SHOWN} more" if len(same) > SHOWN else "")
        warn(
            f"{file.path}: skipped {len(same)} pair(s) whose chosen and rejected answers are the same text "
            f"({file.unit}s {shown})"
        )
    if not values:
        usable = "usable " if stage is PAIRS else ""
        raise DataError(f"{file.path} holds no {usable}{stage.nouns[1]}; the formats for {stage.name}: {stage.formats}")
    kinds = ", ".join(f"{name} {n:,}" if len(counts) > 1 else name for name, n in counts.items())
    info(f"{file.path}: {stage.count(len(values))} ({file.container}; {kinds})")
    return values


def read(source: str | Path, stage: Stage) -> list:
    """Every record of a file or folder, read for ``stage``."""
    return [value for file in data_files(source) for value in read_file(file, stage)]


def read_documents(source: str | Path) -> list[str]:
    return read(source, DOCUMENTS)


def read_conversations(source: str | Path) -> list[list[dict]]:
    """Conversations as message lists; Alpaca records become one user and one assistant turn."""
    return read(source, CONVERSATIONS)


def read_pairs(source: str | Path) -> list[Pair]:
    """The usable pairs, or one DataError listing every bad record."""
    return read(source, PAIRS)


def read_prompts(sources: list[str | Path]) -> list[list[dict]]:
    """Each distinct prompt once, in file order: the prompts a policy answers in PPO."""
    seen: dict[str, list[dict]] = {}
    for source in sources:
        for prompt in read(source, PROMPTS):
            seen.setdefault(json.dumps(prompt, sort_keys=True), prompt)
    return list(seen.values())


def first_kind(source: str | Path) -> str | None:
    """The record kind of a source's first record (text, conversation, prompt, pair), reading
    only that far; None when it has none or fits no format."""
    file = data_files(source)[0]
    for _, record in records(file, _Problems()):
        fmt = detect(record)
        return fmt.kind if fmt else None
    return None


def is_chat_file(source: str | Path) -> bool:
    """Whether a data file (or folder) holds conversations, else pretraining text; a file whose
    first record is unreadable counts as chat, so that the conversation reader names the line."""
    path = Path(source)
    if not path.exists():
        return False
    return first_kind(path) not in ("text",)
