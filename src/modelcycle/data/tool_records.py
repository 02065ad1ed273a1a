"""Tool calls and tool definitions in language-model records (data/record_formats.py reads the
rest): an assistant's ``tool_calls`` (OpenAI's form), LLaMA-Factory's ShareGPT ``function_call``
turns, and a record's ``tools``, each checked and written the one way the chat template is given
them. A call's ``arguments`` become an object: OpenAI writes them as a JSON string, and templates
such as Qwen2.5's and Llama 3.1's write them with ``tojson``, which would put a string in quotes.
Each reader raises a ValueError that says what is wrong; the file reader adds where."""

from __future__ import annotations

import json

CALL_SHAPE = '{"type": "function", "function": {"name": ..., "arguments": {...}}}'


def _arguments(value: object, where: str) -> dict:
    """A call's arguments as an object: OpenAI's JSON string read, absent ones empty."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f'{where}: the call\'s "arguments" string is not JSON ({exc.msg})') from None
    if not isinstance(value, dict):
        raise ValueError(f'{where}: a call\'s "arguments" must be a JSON object (or a string holding one)')
    return value


def _call(name: object, arguments: object, call_id: object, where: str) -> dict:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: a tool call needs a non-empty function name, as in {CALL_SHAPE}")
    function = {"name": name, "arguments": _arguments(arguments, where)}
    return {"type": "function", "function": function, **({"id": call_id} if isinstance(call_id, str) else {})}


def tool_calls(value: object, where: str) -> list[dict]:
    if (
        not isinstance(value, list)
        or not value
        or not all(
            isinstance(c, dict) and isinstance(c.get("function"), dict) and c.get("type", "function") == "function"
            for c in value
        )
    ):
        raise ValueError(f'{where}: "tool_calls" must be a non-empty list of {CALL_SHAPE}')
    return [_call(c["function"].get("name"), c["function"].get("arguments"), c.get("id"), where) for c in value]


def function_call(value: object, where: str) -> list[dict]:
    """LLaMA-Factory's ShareGPT ``function_call`` turn: the call (or a list of calls) as JSON text."""
    try:
        call = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError:
        call = None
    calls = call if isinstance(call, list) and call else [call]
    if not all(isinstance(c, dict) for c in calls):
        raise ValueError(f'{where}: a function_call\'s value must be JSON such as {{"name": ..., "arguments": ...}}')
    return [_call(c.get("name"), c.get("arguments"), c.get("id"), where) for c in calls]


TOOL_SHAPE = '{"type": "function", "function": {"name": ..., "description": ..., "parameters": {...}}}'


def tools(record: dict) -> list[dict] | None:
    """The record's tool definitions for the chat template, each as OpenAI writes one (a bare
    function, LLaMA-Factory's form, is wrapped so); None when it gives none."""
    value = record.get("tools")
    if isinstance(value, str):  # LLaMA-Factory's ShareGPT: the list as JSON text
        try:
            value = json.loads(value) if value.strip() else None
        except json.JSONDecodeError as exc:
            raise ValueError(f'the "tools" string is not JSON ({exc.msg})') from None
    if not value:
        return None
    if not isinstance(value, list):
        raise ValueError(f'"tools" must be a list of tool definitions, each {TOOL_SHAPE}')
    out = []
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if (
            not isinstance(function, dict)
            or (isinstance(tool, dict) and tool.get("type", "function") != "function")
            or not isinstance(function.get("name"), str)
            or not function["name"].strip()
            or not isinstance(function.get("description", ""), str)
            or not isinstance(function.get("parameters", {}), dict)
        ):
            raise ValueError(
                f'"tools"[{i}] is not a tool definition: write {TOOL_SHAPE} (a string name and description, '
                "an object of parameters), or the function object alone"
            )
        out.append({"type": "function", "function": function})
    return out


def no_tools(record: dict, what: str) -> None:
    if record.get("tools"):
        raise ValueError(
            f'"tools" (tool definitions for the chat template) is read for SFT conversations only, and {what} '
            "would be rendered without them; drop the key, or train the conversations with SFT"
        )
