"""Where an assistant turn that calls a tool lies in a rendered conversation, for SFT's loss mask.

An answer's content is where the template put it (lm/chat_template.py); a tool call is not in the
content, and each template writes it its own way (Qwen2.5: ``<tool_call>\\n{"name": ...,
"arguments": ...}\\n</tool_call>`` inside the assistant turn; Llama 3.1: the call as JSON). So the
turn is found by rendering: its text is what rendering the conversation through that message
adds to rendering the messages before it with the generation prompt, which is exactly what the
model writes when it is asked to answer there. Its content, its calls and the end-of-turn token
that closes it are trained; nothing of the system, user or tool turns is. That holds only for a
template that renders a conversation turn by turn (each prefix of the conversation renders as
the start of the whole, and the turn as the continuation of the generation prompt), which is
checked, and a template that does not is refused with what to do.
"""

from __future__ import annotations

from modelcycle.errors import UserError
from modelcycle.lm.chat_template import render
from modelcycle.lm.end_of_turn import TurnEnd, template_turn_end


def tool_turns(
    tokenizer, messages: list[dict], text: str, end: TurnEnd | None, name: str = "the model", tools=None
) -> dict[int, tuple[int, int, bool]]:
    """{message index: (start, stop, closed)} in ``text`` (the whole conversation rendered with
    ``tools``) of each assistant turn with ``tool_calls``: from the end of the generation prompt
    to the end of the turn, the end-of-turn token ``end`` included when the template writes it
    there (``closed``); else ``stop`` is where ``end`` is to be inserted."""
    found = {}
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or not message.get("tool_calls"):
            continue
        before = render(tokenizer, messages[:i], True, name, tools)
        through = render(tokenizer, messages[: i + 1], False, name, tools)
        if not through.startswith(before) or not text.startswith(through):
            part = "the whole conversation" if through.startswith(before) else "its generation prompt"
            raise UserError(
                f"message {i} calls a tool, and {name}'s chat template does not render this conversation turn by "
                f"turn (the turn does not continue {part} as rendered), so where the call starts and ends cannot "
                "be told for the loss; use a template that renders each turn apart from the later ones (as "
                "Qwen2.5's and Llama 3.1's do), or end the conversation after this turn"
            )
        body = through.rstrip()
        closed = end is not None and body.endswith(end.token)
        if end is not None and not closed and not end.in_template:
            # lm.end_of_turn chose another token: it goes before the template's own, as after an answer
            own = template_turn_end(tokenizer, name)
            if own and body.endswith(own):
                body = body[: -len(own)].rstrip()
        found[i] = (len(before), len(body), closed)
    return found
