"""The chat session's history: kept, trimmed oldest-first to fit the context, never lost to a
message that is too long on its own."""

from __future__ import annotations

import pytest

from modelcycle.lm.chat import ChatSession
from modelcycle.lm.generate import PromptTooLong
from modelcycle.lm.load import load_lm
from modelcycle.lm.sampling import Sampling


@pytest.fixture(scope="module")
def lm(tiny_lm_run):
    return load_lm(tiny_lm_run, device="cpu")


def answer(session: ChatSession, text: str) -> str:
    return "".join(piece.text for piece in session.send(text))


def test_the_oldest_exchanges_make_room_and_the_system_message_stays(lm):
    session = ChatSession(lm, Sampling(temperature=0, max_new_tokens=6), system="Be brief.")
    medium = "the for statement iterates over a sequence " * 3  # ~30 tokens: four of them overflow 128
    for _ in range(4):
        answer(session, medium)
    assert session.forgotten >= 1
    assert session.messages[0] == {"role": "system", "content": "Be brief."}
    assert session.messages[-2]["content"] == medium and session.messages[-1]["role"] == "assistant"
    assert len(lm.chat_ids(session.messages[:-1])) + 6 <= lm.context_length  # what was sent fitted


def test_a_message_too_long_on_its_own_changes_nothing(lm):
    session = ChatSession(lm, Sampling(temperature=0, max_new_tokens=6))
    answer(session, "hello")
    before = list(session.messages)
    with pytest.raises(PromptTooLong, match="maximum context length is 128"):
        answer(session, "word " * 200)
    assert session.messages == before and session.forgotten == 0
    answer(session, "hello again")  # and the conversation goes on
    assert session.messages[:2] == before and len(session.messages) == 4
