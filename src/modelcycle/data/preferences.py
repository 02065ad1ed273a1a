"""Preference pairs: JSONL files where each line says which of two answers to a prompt is better.

Two forms are read, one per line, mixed freely:

* plain: ``{"prompt": "text", "chosen": "text", "rejected": "text"}``; the prompt is one user turn;
* chat: ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`` with messages
  ``{"role": "user"|"assistant"|"system", "content": "..."}``, or ``{"chosen": [...],
  "rejected": [...]}`` alone where both are whole conversations. Either way the answer is the
  last message of ``chosen`` / ``rejected`` (it must be the assistant's) and everything before
  it is the context, which must be the same on both sides: otherwise the pair compares two
  conversations, not two answers.

An optional number ``"margin"`` says how much better ``chosen`` is (for the reward model's
margin loss) and an optional string ``"kind"`` labels the pair for accuracy by kind; other
keys (ids, sources) are ignored. Every line is checked before anything
trains and all problems are reported with file and line at once. A pair whose two answers are
the same text teaches nothing and would only add ``log 2`` to every loss: such pairs are
counted and skipped with a warning rather than refused, as real preference sets carry a few.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelcycle.data.text import SHOWN, json_records, refuse_lines
from modelcycle.errors import DataError
from modelcycle.progress import warn

LINE_FORMAT = (
    'each line must be one JSON object such as {"prompt": "a question", "chosen": "the better answer", '
    '"rejected": "the worse answer"}, or the chat form with message lists (docs/lm-rlhf.md)'
)
ROLES = ("system", "user", "assistant")
TRAIN_FILE, VAL_FILE = "prefs-train.jsonl", "prefs-val.jsonl"


@dataclass(frozen=True)
class Pair:
    prompt: tuple[tuple[str, str], ...]  # (role, content) turns before the answer
    chosen: str
    rejected: str
    margin: float | None = None
    line: int = 0
    kind: str | None = None  # the line's optional "kind" (the pydocs pairs': wrong_topic, shuffled)

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.prompt]


def read_pairs(path: str | Path) -> list[Pair]:
    """The file's usable pairs, or one DataError listing every bad line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; {LINE_FORMAT}")
    pairs, problems, same = [], [], []
    for number, record in json_records(path, problems):
        try:
            pair = parse_pair(record, number)
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
            continue
        if pair.chosen.strip() == pair.rejected.strip():
            same.append(number)
        else:
            pairs.append(pair)
    if problems:
        refuse_lines(path, problems, LINE_FORMAT + "; fix or delete these lines")
    if same:
        lines = ", ".join(map(str, same[:SHOWN])) + (f" and {len(same) - SHOWN} more" if len(same) > SHOWN else "")
        warn(f"{path}: skipped {len(same)} pair(s) whose chosen and rejected answers are the same text (lines {lines})")
    if not pairs:
        raise DataError(f"{path} holds no usable preference pairs; {LINE_FORMAT}")
    return pairs


def parse_pair(record: object, line: int = 0) -> Pair:
    """One JSON record -> a Pair; a ValueError says what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    for key in ("chosen", "rejected"):
        if key not in record:
            raise ValueError(f'no "{key}" key (keys: {", ".join(map(str, record)) or "none"})')
    margin = record.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)):
        raise ValueError(f'"margin" is {margin!r}, not a number')
    prompt = record.get("prompt", [])
    chosen, rejected = record["chosen"], record["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError('"prompt" must be a non-empty string when "chosen" and "rejected" are strings')
        context: list[tuple[str, str]] = [("user", prompt)]
    elif isinstance(chosen, list) and isinstance(rejected, list):
        if not isinstance(prompt, list):
            raise ValueError('"prompt" must be a message list when "chosen" and "rejected" are message lists')
        head = _messages(prompt, "prompt")
        full_c, full_r = head + _messages(chosen, "chosen"), head + _messages(rejected, "rejected")
        for key, conversation in (("chosen", full_c), ("rejected", full_r)):
            if not conversation or conversation[-1][0] != "assistant":
                raise ValueError(f'"{key}" must end with an assistant message (the answer being compared)')
        if full_c[:-1] != full_r[:-1]:
            raise ValueError('"chosen" and "rejected" differ before their last message; only the answer may differ')
        context, chosen, rejected = full_c[:-1], full_c[-1][1], full_r[-1][1]
    else:
        raise ValueError('"chosen" and "rejected" must both be strings or both be message lists')
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise ValueError(f'the "{key}" answer is empty')
    kind = record.get("kind")
    margin = None if margin is None else float(margin)
    return Pair(tuple(context), chosen, rejected, margin, line, kind if isinstance(kind, str) else None)


def _messages(value: list, key: str) -> list[tuple[str, str]]:
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f'"{key}"[{i}] must be an object with a "role" and a string "content"')
        if message.get("role") not in ROLES:
            raise ValueError(f'"{key}"[{i}] has role {message.get("role")!r}; roles are {", ".join(ROLES)}')
        out.append((message["role"], message["content"]))
    return out


def open_pairs(root: str | Path) -> tuple[list[Pair], list[Pair] | None]:
    """The train pairs and the held-out ones (None when the folder has no val file)."""
    root = Path(root)
    if not (root / TRAIN_FILE).is_file():
        raise DataError(
            f"{root} has no {TRAIN_FILE}; data.root is a folder holding {TRAIN_FILE} and {VAL_FILE} "
            f"({LINE_FORMAT}); `modelcycle datasets pydocs --out data/pydocs` writes one"
        )
    val = read_pairs(root / VAL_FILE) if (root / VAL_FILE).is_file() else None
    return read_pairs(root / TRAIN_FILE), val


def unique_prompts(pairs: list[Pair]) -> list[list[dict[str, str]]]:
    """Each distinct prompt once, in file order: the prompts a policy answers in PPO and evaluation."""
    seen: dict[tuple, None] = {}
    for pair in pairs:
        seen.setdefault(pair.prompt, None)
    return [[{"role": r, "content": c} for r, c in prompt] for prompt in seen]
