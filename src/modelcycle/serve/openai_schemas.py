"""Request bodies of the OpenAI-compatible routes, as the official clients send them.

Fields we do not act on (``user``, ``metadata``...) are ignored, as OpenAI's newer fields would
be: a client library update must not break the server. Fields that would change the answer in a
way we do not implement (``n`` > 1, penalties, ``logprobs``, ``echo``) are refused with a 400
that names them, rather than silently giving an answer the client did not ask for.

Every value is checked here, before any work: numbers are finite and in range (``seed`` within
OpenAI's int64; a temperature too small to divide by is greedy, see ``lm/sampling.py``), and
text is valid Unicode: JSON can carry a lone UTF-16 surrogate (``"\\ud800"``), which no
tokenizer can encode, so it is refused with a 400 that says where.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from modelcycle.errors import UserError
from modelcycle.lm.chat_template import lone_surrogate
from modelcycle.lm.sampling import Sampling

MAX_STOP_CHARS = 1000  # a stop string is matched against every new token's text


def _unicode(text: str) -> str:
    if problem := lone_surrogate(text):
        raise ValueError(problem + "; send valid Unicode (a client bug, or a string cut in half)")
    return text


Text = Annotated[str, AfterValidator(_unicode)]
Stop = Annotated[Text, Field(min_length=1, max_length=MAX_STOP_CHARS)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: Text | None = None  # may be left out when the server serves one model
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)  # below 1e-5: greedy, as 0
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # not in OpenAI's API; the name vLLM and others accept
    repetition_penalty: float = Field(1.0, gt=0)  # likewise
    n: int = 1
    stop: Stop | list[Stop] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # OpenAI's int64
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def refuse_unsupported(self) -> None:
        if self.n != 1:
            raise UserError(f"n={self.n}: this server returns one choice per request; send n=1 (or omit it)")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise UserError(f"{name} is not supported; use repetition_penalty (1.0-1.3) instead, or omit it")

    def stops(self) -> tuple[str, ...]:
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if len(stops) > 4:
            raise UserError(f"stop: {len(stops)} stop strings; at most 4 are allowed")
        return stops

    def sampling(self, max_new_tokens: int) -> Sampling:
        return Sampling(
            max_new_tokens=max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            stop=self.stops(),
            seed=self.seed,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] | None = None

    def as_template_message(self) -> dict:
        """developer is OpenAI's newer name for system; chat templates know system."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool = False

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.logprobs:
            raise UserError("logprobs is not supported on this server; omit it")

    @property
    def wanted_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: Text | list[Text]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        unsupported = {"echo": self.echo, "logprobs": self.logprobs is not None, "suffix": self.suffix is not None}
        unsupported["best_of"] = self.best_of not in (None, 1)
        for name, used in unsupported.items():
            if used:
                raise UserError(f"{name} is not supported on this server; omit it")

    @property
    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not prompts:
            raise UserError("prompt: an empty list; send a string or a list of strings")
        return prompts

    @property
    def wanted_tokens(self) -> int | None:
        return self.max_tokens
