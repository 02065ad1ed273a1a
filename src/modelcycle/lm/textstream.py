"""Token ids -> text pieces as they are generated, for streaming to a terminal or an HTTP client.

Two things make this more than ``decode`` per token. A byte-level tokenizer splits one character
into several tokens (an emoji is four bytes), and decoding part of it gives U+FFFD: such a tail is
held back until the character is whole. And a stop string may arrive over several tokens: text
that could be the start of one is held back until it is clearly not, so a client never receives
a piece that generation later takes back.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class TextStream:
    """One sequence's text so far. ``push(token)`` returns the text that is now safe to show;
    ``finish()`` the rest once generation ends. The pieces joined equal ``text``."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""  # decoded so far, cut before a stop string once one appeared
        self.shown = 0  # characters of self.text already handed out
        self.stopped = False  # a stop string appeared

    def push(self, token: int) -> str:
        self.ids.append(token)
        # the whole sequence each time: byte-level pieces only make sense together, and
        # clean-up of spaces is off so that earlier text never changes under a later token
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cut = self._stop_at(text)
        if cut is not None:
            self.text, self.stopped = text[:cut], True
            return self._show(len(self.text))
        self.text = text
        safe = len(text.rstrip(REPLACEMENT))
        return self._show(safe - self._held(text[:safe]))

    def finish(self) -> str:
        """Everything not shown yet (a character cut off by the token limit stays U+FFFD)."""
        return self._show(len(self.text))

    def _stop_at(self, text: str) -> int | None:
        # a stop string can only end in the new text, so the search starts where it could begin
        start = max(0, self.shown - max((len(s) for s in self.stop), default=0))
        found = [i for s in self.stop if (i := text.find(s, start)) >= 0]
        return min(found) if found else None

    def _held(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        for size in range(min(len(text), max((len(s) for s in self.stop), default=1) - 1), 0, -1):
            if any(s.startswith(text[-size:]) for s in self.stop):
                return size
        return 0

    def _show(self, upto: int) -> str:
        if upto <= self.shown:
            return ""
        piece = self.text[self.shown : upto]
        self.shown = upto
        return piece
