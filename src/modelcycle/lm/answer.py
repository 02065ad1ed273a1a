"""One sequence being generated: the tokens made so far, the text that is safe to show, the
log-probabilities asked for, and why it ended (the end of turn, a stop string, its token limit).

Both decoding loops keep one per row, whatever the rows around it do: the static batch of
``generate.py`` (the CLI, chat, PPO) and the continuous batch of ``batching.py`` (the server).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from modelcycle.lm.sampling import Sampling
from modelcycle.lm.textstream import TextStream

Top = list[tuple[int, float]]  # the likeliest tokens of one step and their log-probabilities


@dataclass
class Generation:
    """One prompt's result. ``token_ids`` are the new tokens (the end-of-turn token included when
    generation ended on it: a PPO rollout must learn to emit it); ``text`` has no special tokens."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end of turn or a stop string) or "length" (token limit or context)
    prompt_tokens: int
    logprobs: list[float] | None = None


class Answer:
    """``take(token)`` after each step; ``done`` once it has ended. ``token_ids`` keep the
    end-of-turn token when generation ended on it (the text does not)."""

    def __init__(self, tokenizer, eos_ids: Collection[int], prompt: list[int], sampling: Sampling, limit: int):
        self.tokenizer, self.eos_ids = tokenizer, eos_ids
        self.prompt, self.sampling, self.limit = prompt, sampling, limit
        self.stream = TextStream(tokenizer, sampling.stop)
        self.token_ids: list[int] = []
        self.logprobs: list[float] | None = [] if sampling.logprobs else None
        self.top_logprobs: list[Top] | None = [] if sampling.top_logprobs else None
        # with echo: per prompt token, its log-probability and the likeliest ones (None for the first)
        self.prompt_logprobs: list[tuple[float, Top] | None] | None = None
        self.finish_reason = "length"
        self.done = False

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)

    @property
    def text(self) -> str:
        return self.stream.text

    def take(self, token: int, logprob: float | None = None, top: Top | None = None) -> str:
        """Record one new token; returns the text now safe to show (often none)."""
        self.token_ids.append(token)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)
        if self.top_logprobs is not None and top is not None:
            self.top_logprobs.append(top)
        if token in self.eos_ids:
            self.finish_reason, self.done = "stop", True
            return ""
        piece = self.stream.push(token)
        if self.stream.stopped:
            self.finish_reason = "stop"
        self.done = self.stream.stopped or len(self.token_ids) >= self.limit
        return piece

    def finish(self) -> str:
        """The text held back until the end (a stop string's possible start, a cut character)."""
        return self.stream.finish()

    def generation(self) -> Generation:
        return Generation(self.text, self.token_ids, self.finish_reason, self.prompt_tokens, self.logprobs)
