"""The record formats language-model data comes in, each told by its keys and read into the forms
the stages use: a document (text), a conversation (a message list with an assistant turn), a
prompt (a message list the policy answers) or a preference :class:`Pair`.

Messages are ``{"role", "content"}`` with the roles system, user, assistant and tool; an assistant
message may carry ``tool_calls`` (its content then may be null) and a tool message its
``tool_call_id`` or ``name``: these are kept for the chat template (data/tool_records.py reads
calls and a record's ``tools``, which ride on its :class:`Conversation`). A key whose value is
null counts as absent (a Parquet file has every column in every row). Each reader raises a
ValueError that says what is wrong with the record; the file reader (data/formats.py) adds where.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from modelcycle.data.tool_records import function_call, no_tools, tool_calls, tools

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    **{name: "user" for name in ("human", "user")},
    **{name: "assistant" for name in ("gpt", "assistant", "chatgpt", "bing", "bard", "model")},
    "system": "system",
    **{name: "tool" for name in ("observation", "tool", "function_response")},
    "function_call": "assistant",  # LLaMA-Factory: the value is the call as JSON
}
KEPT = ("tool_call_id", "name")  # what a message carries besides role, content and tool_calls


class Conversation(list):
    """A conversation's messages (a list: every reader of conversations takes it as one), with
    the tool definitions its record gives the chat template (``tools``, None for none) and where
    it was read (``where``: file and line, for the problems found when it is tokenised)."""

    def __init__(self, messages, tools: list[dict] | None = None, where: str = ""):
        super().__init__(messages)
        self.tools = tools
        self.where = where


@dataclass(frozen=True)
class Pair:
    prompt: tuple[tuple[str, str], ...]  # (role, content) turns before the answer
    chosen: str
    rejected: str
    margin: float | None = None
    line: int = 0  # the line (or row) of its file
    kind: str | None = None  # the record's optional "kind" (the pydocs pairs': wrong_topic, shuffled)

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.prompt]


def given(record: dict) -> set[str]:
    return {key for key, value in record.items() if value is not None}


def _text(record: dict, key: str, what: str = "", required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise ValueError(f'{what}no non-empty "{key}" string')
    return value


def message(item: object, where: str, role_key: str = "role", content_key: str = "content", roles=None) -> dict:
    """One message, its role mapped through ``roles`` (ShareGPT's names) when given."""
    if not isinstance(item, dict) or not isinstance(item.get(role_key), str):
        raise ValueError(f'{where} is not an object with "{role_key}" and "{content_key}" strings')
    role = (roles or {}).get(item[role_key], item[role_key])
    if role not in ROLES:
        known = ", ".join(roles or ROLES)
        raise ValueError(f"{where} has the role {item[role_key]!r}; the roles are {known}")
    content, out = item.get(content_key), {}
    if item.get("tool_calls") is not None and role != "assistant":
        raise ValueError(f'{where} is a {role} message with "tool_calls"; only the assistant calls tools')
    if item.get("tool_calls") is not None:
        out["tool_calls"] = tool_calls(item["tool_calls"], where)
        content = "" if content is None else content
    elif roles is not None and item[role_key] == "function_call":  # LLaMA-Factory's call: JSON text
        out["tool_calls"] = function_call(content, where)
        content = ""
    if not isinstance(content, str):
        raise ValueError(f'{where} is not an object with "{role_key}" and "{content_key}" strings')
    for key in KEPT:
        if key not in out and item.get(key) is not None and role != "user":
            if not isinstance(item[key], str):
                raise ValueError(f'{where}: "{key}" must be a string')
            out[key] = item[key]
    return {"role": role, "content": content, **out}


def messages(value: object, key: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f'"{key}" must be a non-empty list of {{"role", "content"}} objects')
    return [message(item, f"{key}[{i}]") for i, item in enumerate(value)]


def _conversation(turns: list[dict]) -> list[dict]:
    if not any(m["role"] == "assistant" for m in turns):
        raise ValueError("the conversation has no assistant turn, so there is nothing to learn from it")
    return turns


def _system(record: dict) -> list[dict]:
    text = _text(record, "system", required=False)
    return [{"role": "system", "content": text}] if text else []


# ---------------------------------------------------------------- the formats


def read_messages(record: dict) -> Conversation:
    return Conversation(_conversation(messages(record["messages"], "messages")), tools(record))


def _sharegpt_turns(record: dict) -> list[dict]:
    turns = record["conversations"]
    if not isinstance(turns, list) or not turns:
        raise ValueError('"conversations" must be a non-empty list of {"from", "value"} objects')
    out = _system(record)
    for i, item in enumerate(turns):
        keys = ("from", "value") if isinstance(item, dict) and "from" in item else ("role", "content")
        out.append(message(item, f"conversations[{i}]", *keys, roles=SHAREGPT_ROLES))
    return out


def read_sharegpt(record: dict) -> Conversation:
    return Conversation(_conversation(_sharegpt_turns(record)), tools(record))


def _alpaca_prompt(record: dict) -> list[dict]:
    """System, the history's turns, then the instruction (and its input after a blank line)."""
    if isinstance(record.get("output"), list):
        raise ValueError('"output" is a list (the old ranking form); write the two answers as "chosen" and "rejected"')
    instruction = _text(record, "instruction", "Alpaca format: ")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise ValueError('"input" must be a string')
    history = record.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(turn, list | tuple) and len(turn) == 2 and all(isinstance(t, str) for t in turn) for turn in history
    ):
        raise ValueError('"history" must be a list of [instruction, answer] string pairs')
    out = _system(record)
    for question, answer in history:
        out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    text = instruction + (f"\n\n{extra}" if (extra or "").strip() else "")
    return [*out, {"role": "user", "content": text}]


def read_alpaca(record: dict) -> list[dict]:
    prompt = _alpaca_prompt(record)
    return [*prompt, {"role": "assistant", "content": _text(record, "output", "Alpaca format: ")}]


def _prompt(value: object) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError('"prompt" is empty')
        return [{"role": "user", "content": value}]
    return messages(value, "prompt")


def read_prompt_completion(record: dict) -> Conversation:
    return Conversation(_prompt_completion(record), tools(record))  # TRL's tool-calling rows carry "tools"


def _prompt_completion(record: dict) -> list[dict]:
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, str) != isinstance(completion, str):
        raise ValueError('"prompt" and "completion" must both be strings or both be message lists')
    if isinstance(completion, str):
        if not completion.strip():
            raise ValueError('the "completion" is empty')
        return [*_prompt(prompt), {"role": "assistant", "content": completion}]
    answer = messages(completion, "completion")
    if not any(m["role"] == "assistant" for m in answer):
        raise ValueError('"completion" holds no assistant message')
    return [*_prompt(prompt), *answer]


def read_prompt_only(record: dict) -> list[dict]:
    no_tools(record, "a PPO prompt")
    prompt = _prompt(record["prompt"])
    if prompt[-1]["role"] == "assistant":
        raise ValueError('"prompt" ends with an assistant message; a prompt ends where the answer starts')
    return prompt


def read_text(record: dict) -> str:
    return _text(record, "text")


def _turns(value: list, key: str) -> list[tuple[str, str]]:
    """A message list of a pair as (role, content) turns; a pair's prompt carries no tool calls."""
    out = []
    for i, item in enumerate(value):
        turn = message(item, f'"{key}"[{i}]')
        if extra := sorted(set(turn) - {"role", "content"}):
            raise ValueError(
                f'"{key}"[{i}] carries {", ".join(extra)}; preference pairs are read as text, so tool calls are '
                "not compared yet (SFT trains them)"
            )
        out.append((turn["role"], turn["content"]))
    return out


def _pair(record: dict, context: list[tuple[str, str]], chosen: str, rejected: str) -> Pair:
    margin = record.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)):
        raise ValueError(f'"margin" is {margin!r}, not a number')
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise ValueError(f'the "{key}" answer is empty')
    kind = record.get("kind") if isinstance(record.get("kind"), str) else None
    return Pair(tuple(context), chosen, rejected, None if margin is None else float(margin), 0, kind)


def read_preference(record: dict) -> Pair:
    """TRL's preference forms: strings (the prompt one user turn), message lists, or whole
    conversations in ``chosen`` and ``rejected`` with no ``prompt`` (the implicit prompt: what the
    two have in common before their last message)."""
    for key in ("chosen", "rejected"):
        if record.get(key) is None:
            raise ValueError(f'no "{key}" key (keys: {", ".join(map(str, record)) or "none"})')
    no_tools(record, "a preference pair")
    prompt = record.get("prompt")
    chosen, rejected = record["chosen"], record["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(
                '"prompt" must be a non-empty string when "chosen" and "rejected" are strings '
                "(an implicit prompt is read from message lists only)"
            )
        return _pair(record, [("user", prompt)], chosen, rejected)
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise ValueError('"chosen" and "rejected" must both be strings or both be message lists')
    if not isinstance(prompt, list | None):
        raise ValueError('"prompt" must be a message list when "chosen" and "rejected" are message lists')
    head = _turns(prompt or [], "prompt")
    full_c, full_r = head + _turns(chosen, "chosen"), head + _turns(rejected, "rejected")
    for key, conversation in (("chosen", full_c), ("rejected", full_r)):
        if not conversation or conversation[-1][0] != "assistant":
            raise ValueError(f'"{key}" must end with an assistant message (the answer being compared)')
    if full_c[:-1] != full_r[:-1]:
        raise ValueError('"chosen" and "rejected" differ before their last message; only the answer may differ')
    return _pair(record, full_c[:-1], full_c[-1][1], full_r[-1][1])


def _answer(record: dict, key: str) -> str:
    value = record[key]
    if isinstance(value, dict):
        value = message(value, f'"{key}"', "from", "value", SHAREGPT_ROLES) if "from" in value else message(value, key)
        if value["role"] != "assistant" or set(value) - {"role", "content"}:
            raise ValueError(f'"{key}" must be one answer of the assistant (gpt)')
        value = value["content"]
    if not isinstance(value, str):
        raise ValueError(f'"{key}" must be a {{"from": "gpt", "value": ...}} object or a string')
    return value


def _as_pair(record: dict, prompt: list[dict]) -> Pair:
    no_tools(record, "a preference pair")
    if prompt[-1]["role"] == "assistant":
        raise ValueError("the prompt ends with an assistant turn; a pair's prompt ends where the answers start")
    if any(set(m) - {"role", "content"} for m in prompt):
        raise ValueError(
            "the prompt carries tool calls; preference pairs are read as text, so tool calls are not compared yet "
            "(SFT trains them)"
        )
    context = [(m["role"], m["content"]) for m in prompt]
    return _pair(record, context, _answer(record, "chosen"), _answer(record, "rejected"))


def read_sharegpt_pair(record: dict) -> Pair:
    return _as_pair(record, _sharegpt_turns(record))


def read_alpaca_pair(record: dict) -> Pair:
    return _as_pair(record, _alpaca_prompt(record))


@dataclass(frozen=True)
class Format:
    name: str  # as printed: "Alpaca"
    keys: str  # the keys that tell it, as printed
    kind: str  # text | conversation | prompt | pair
    read: Callable[[dict], object]
    any_of: tuple[str, ...]  # a record of this format has one of these keys
    all_of: tuple[str, ...] = ()  # and all of these

    def fits(self, keys: set[str]) -> bool:
        return bool(keys.intersection(self.any_of)) and keys.issuperset(self.all_of)


PAIR_KEYS = ("chosen", "rejected")
# in the order they are tried: the first whose keys a record has is its format
FORMATS = (
    Format(
        "ShareGPT pairs", "conversations/chosen/rejected", "pair", read_sharegpt_pair, PAIR_KEYS, ("conversations",)
    ),
    Format("Alpaca pairs", "instruction/input/chosen/rejected", "pair", read_alpaca_pair, PAIR_KEYS, ("instruction",)),
    Format("prompt/chosen/rejected", "prompt/chosen/rejected", "pair", read_preference, PAIR_KEYS),
    Format("chat messages", "messages", "conversation", read_messages, ("messages",)),
    Format("ShareGPT", "conversations", "conversation", read_sharegpt, ("conversations",)),
    Format("Alpaca", "instruction/input/output", "conversation", read_alpaca, ("instruction", "output")),
    Format(
        "prompt/completion", "prompt/completion", "conversation", read_prompt_completion, ("completion",), ("prompt",)
    ),
    Format("prompt-only", "prompt", "prompt", read_prompt_only, ("prompt",)),
    Format("text", "text", "text", read_text, ("text",)),
)


def detect(record: object) -> Format | None:
    """The record's format, from its keys; None when it has none of them (or is no object)."""
    if not isinstance(record, dict):
        return None
    keys = given(record)
    return next((f for f in FORMATS if f.fits(keys)), None)
