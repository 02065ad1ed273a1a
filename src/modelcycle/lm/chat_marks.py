"""The strings people wrote in a conversation, marked for lm/chat_template.py: each message's
content, and a tool call's name, id and arguments (every key and string, the structure kept, as
a template may walk it), a tool result's name and call id, each replaced by a sentinel, so that
where the chat template writes them can be found and they are tokenised as text; and the ways a
template may write each (content as it is or stripped, a call's strings as they are or
JSON-escaped, as ``tojson`` writes them)."""

from __future__ import annotations

import json


def marked(messages: list[dict], sentinel) -> tuple[list[dict], list[tuple[int, str, str]]]:
    """The messages with each string people wrote replaced by ``sentinel(k)``, and what each
    stands for: (message index, kind, text), kind ``content``, ``name`` (a call's function) or
    ``data`` (the rest of a call, keys of its arguments included; a tool result's name and id)."""
    values: list[tuple[int, str, str]] = []

    def mark(i: int, kind: str, text: str) -> str:
        values.append((i, kind, text))
        return sentinel(len(values) - 1)

    def data(i: int, value):  # the arguments' structure is kept: templates may walk it
        if isinstance(value, dict):
            return {mark(i, "data", str(key)): data(i, item) for key, item in value.items()}
        if isinstance(value, list):
            return [data(i, item) for item in value]
        return mark(i, "data", value) if isinstance(value, str) else value

    def call(i: int, call: dict) -> dict:
        function = call["function"]
        strings = {"name": mark(i, "name", function["name"]), "arguments": data(i, function.get("arguments", {}))}
        ids = {"id": mark(i, "data", call["id"])} if isinstance(call.get("id"), str) else {}
        return {**call, **ids, "function": {**function, **strings}}

    out = []
    for i, message in enumerate(messages):
        copy = {**message}
        if message["content"] or not message.get("tool_calls"):  # a call's empty content stays empty: templates test it
            copy["content"] = mark(i, "content", message["content"])
        for key in ("tool_call_id", "name"):  # a tool result's
            if isinstance(message.get(key), str):
                copy[key] = mark(i, "data", message[key])
        if message.get("tool_calls"):
            copy["tool_calls"] = [call(i, c) for c in message["tool_calls"]]
        out.append(copy)
    return out, values


def renderings(kind: str, text: str) -> dict[str, None]:
    """How a template may write a string: content as it is or stripped; a call's strings as they
    are or JSON-escaped (``tojson``, with or without ASCII escapes)."""
    if kind == "content":
        return dict.fromkeys((text, text.strip(), text.rstrip(), text.lstrip()))
    return dict.fromkeys((text, json.dumps(text, ensure_ascii=False)[1:-1], json.dumps(text)[1:-1]))


def strings(value) -> list[str]:
    """Every key and string in a JSON value, in order (tool definitions)."""
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in (str(key), *strings(item))]
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return [value] if isinstance(value, str) else []
