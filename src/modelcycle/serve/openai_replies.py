"""Answers of the OpenAI-compatible routes in OpenAI's wire format: choices, stream chunks and
log-probabilities (chat's ``logprobs.content`` list; completions' legacy ``tokens`` /
``token_logprobs`` / ``top_logprobs`` / ``text_offset``).

A token is shown as its own text (special tokens included), and ``bytes`` are that text's UTF-8
bytes, as vLLM does: a token that holds part of a character shows U+FFFD. The end-of-turn token
an answer stopped at is not part of its text. Chat's log-probabilities leave it out with the text;
completions' list it, as vLLM does, so that every generated token has its entry: with ``echo`` and
``max_tokens=1`` there is always exactly one entry past the prompt, which evaluation harnesses
slice on (lm-evaluation-harness drops the last entry as the generated one; without the stop
token's entry it would drop the continuation's last token and score it wrong).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence

from modelcycle.lm.answer import Answer, Top

Token = tuple[int, float | None, Top | None]  # id, log-probability (None: the first prompt token), alternatives


class Tokens:
    """Turns token ids into the texts the log-probabilities show, for one model."""

    def __init__(self, tokenizer, eos_ids: Collection[int], keep_stop: bool = False):
        self.tokenizer, self.eos_ids = tokenizer, set(eos_ids)
        self.keep_stop = keep_stop  # completions: the stop token keeps its entry (see above)

    def text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def generated(
        self, ids: Sequence[int], logprobs: Sequence[float] | None, tops: Sequence[Top] | None
    ) -> list[Token]:
        """The tokens of (part of) an answer with their figures, the end of turn left out unless
        ``keep_stop``."""
        return [
            (token, logprobs[i] if logprobs else None, tops[i] if tops else [])
            for i, token in enumerate(ids)
            if self.keep_stop or token not in self.eos_ids
        ]

    def of_answer(self, answer: Answer) -> list[Token]:
        return self.generated(answer.token_ids, answer.logprobs, answer.top_logprobs)

    def of_prompt(self, answer: Answer) -> list[Token]:
        """The prompt's tokens with their log-probabilities (``echo``); the first has none."""
        figures = answer.prompt_logprobs or [None] * len(answer.prompt)
        return [(t, f[0] if f else None, f[1] if f else None) for t, f in zip(answer.prompt, figures, strict=True)]

    def chat(self, tokens: list[Token]) -> dict:
        def entry(token: int, logprob: float) -> dict:
            text = self.text(token)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        content = [
            {**entry(token, logprob), "top_logprobs": [entry(t, lp) for t, lp in top or []]}
            for token, logprob, top in tokens
        ]
        return {"content": content, "refusal": None}

    def completion(self, tokens: list[Token], offset: int = 0) -> dict:
        texts = [self.text(token) for token, _, _ in tokens]
        offsets = []
        for text in texts:
            offsets.append(offset)
            offset += len(text)
        return {
            "tokens": texts,
            "token_logprobs": [logprob for _, logprob, _ in tokens],
            "top_logprobs": [None if top is None else {self.text(t): lp for t, lp in top} for _, _, top in tokens],
            "text_offset": offsets,
        }


def choice(index: int, text: str, finish: str | None, chat: bool, logprobs: dict | None = None) -> dict:
    if chat:
        message = {"role": "assistant", "content": text}
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def delta(index: int, change: dict, finish: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "delta": change, "logprobs": logprobs, "finish_reason": finish}


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
