"""A conversation with a chat model: the history, the chat template, and the terminal REPL of
``modelcycle lm chat``.

When the history outgrows the model's context, the oldest exchanges are forgotten (the system
prompt stays) and the user is told so, rather than failing in the middle of a conversation.
At a terminal, lines are read with line editing and history (the standard library's
``readline``: arrow keys, Ctrl-A/E, Up for the previous lines, Ctrl-R to search them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from modelcycle.errors import UserError
from modelcycle.lm.generate import Generation, LanguageModel, Piece
from modelcycle.lm.sampling import Sampling

COMMANDS = "/reset forgets the conversation, /exit (or Ctrl-D) leaves"


class ChatSession:
    """The messages so far; ``send`` streams the assistant's answer and keeps it in the history."""

    def __init__(self, lm: LanguageModel, sampling: Sampling, system: str | None = None):
        self.lm = lm
        self.sampling = sampling
        self.system = [{"role": "system", "content": system}] if system else []
        self.turns: list[dict] = []
        self.forgotten = 0  # exchanges dropped to fit the context
        self.last: Generation | None = None

    @property
    def messages(self) -> list[dict]:
        return self.system + self.turns

    def reset(self) -> None:
        self.turns, self.forgotten, self.last = [], 0, None

    def send(self, text: str) -> Iterator[Piece]:
        """Pieces of the answer to ``text``; once they are all read the answer is in the history.
        A message too long for the context raises ``PromptTooLong`` and changes nothing."""
        self.turns.append({"role": "user", "content": text})
        try:
            ids = self._fitting_prompt()
        except UserError:
            self.turns.pop()
            raise
        stream = self.lm.stream([ids], self.sampling)
        yield from stream
        self.last = stream.results[0]
        self.turns.append({"role": "assistant", "content": self.last.text})

    def _fitting_prompt(self) -> list[int]:
        """The prompt without the oldest exchanges it has no room for; they are forgotten only
        once the rest is known to fit."""
        # leave room for at least a short answer: a prompt that fills the context answers nothing
        room = min(self.sampling.max_new_tokens, max(self.lm.context_length // 4, 1))
        dropped = 0
        while True:
            ids = self.lm.chat_ids(self.system + self.turns[2 * dropped :])
            if len(ids) + room <= self.lm.context_length or len(self.turns) - 2 * dropped <= 1:
                break
            dropped += 1  # the oldest user message and its answer
        self.lm.check_fits(ids)
        del self.turns[: 2 * dropped]
        self.forgotten += dropped
        return ids


def terminal_reader(prompt: str) -> Callable[[], str]:
    """``read()`` for a terminal: a line typed after ``prompt`` (shown in bold) with line editing
    and this session's history, "" at Ctrl-D. Ctrl-C drops the line being typed."""
    try:
        import readline  # noqa: F401 - imported, it gives input() line editing and a history

        # readline must be told which characters print nothing (between \001 and \002), or it misplaces the cursor
        shown = f"\001\033[1m\002{prompt}\001\033[0m\002 "
    except ImportError:  # an interpreter built without it: plain lines, as before
        shown = prompt + " "

    def read() -> str:
        try:
            return input(shown) + "\n"
        except EOFError:
            return ""
        except KeyboardInterrupt:
            print()
            return "\n"

    return read


def repl(
    session: ChatSession,
    read: Callable[[], str],
    write: Callable[[str], None],
    note: Callable[[str], None],
) -> int:
    """Read user messages with ``read`` (a line, "" at EOF: ``sys.stdin.readline`` or
    ``terminal_reader``) until EOF or /exit; answers go to ``write`` piece by piece, remarks to
    ``note``. Returns the number of answers given."""
    answers = 0
    note(f"chatting with {session.lm.name} ({COMMANDS})")
    while True:
        line = read()
        if not line:  # EOF
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            note("(conversation forgotten)")
            continue
        if text.startswith("/"):
            note(f"unknown command {text.split()[0]}; {COMMANDS}")
            continue
        forgotten = session.forgotten
        try:
            for piece in session.send(text):
                write(piece.text)
        except UserError as exc:  # a message too long for the context: say so and go on
            note(f"error: {exc}")
            continue
        write("\n")
        answers += 1
        if session.forgotten > forgotten:
            note(f"(forgot the {session.forgotten} oldest exchanges to fit the model's context)")
        if session.last is not None and session.last.finish_reason == "length":
            note(f"(cut off at {len(session.last.token_ids)} tokens; raise --max-new-tokens for longer answers)")
    return answers
