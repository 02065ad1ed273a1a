"""Request bodies of the OpenAI-compatible routes, as the official clients send them.

Fields we do not act on and that do not change the answer (``user``, ``metadata``,
``parallel_tool_calls``...) are ignored, as OpenAI's newer fields would be: a client library
update must not break the server. Fields that would change the answer in a way we do not
implement are refused with a 400 that names them, never accepted and ignored: ``tools`` and
``tool_choice`` (function calling), ``response_format`` other than text (JSON mode, structured
outputs: no decoding here is constrained to a schema, so JSON could not be promised),
``logit_bias``, ``suffix``, ``best_of`` other than ``n``. Those fields are read only to refuse
them, so the OpenAPI description (``/docs``) leaves them out: it lists what the server does.

Every value is checked here, before any work: numbers are finite and in range (``seed`` within
OpenAI's int64; a temperature too small to divide by is greedy, see ``lm/sampling.py``), and
text is valid Unicode: JSON can carry a lone UTF-16 surrogate (``"\\ud800"``), which no
tokenizer can encode, so it is refused with a 400 that says where. The server's own caps
(``serve.max_n``, ``serve.max_stop``, ``serve.max_top_logprobs``...) are the protocol's.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from modelcycle.errors import UserError
from modelcycle.lm.chat_template import lone_surrogate
from modelcycle.lm.defaults import with_defaults
from modelcycle.lm.sampling import Sampling

MAX_STOP_CHARS = 1000  # a stop string is matched against every new token's text
OPENAI_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


class Refused(UserError):
    """A field the server does not implement, or a value it does not take: a 400 naming it."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def _unicode(text: str) -> str:
    if problem := lone_surrogate(text):
        raise ValueError(problem + "; send valid Unicode (a client bug, or a string cut in half)")
    return text


Text = Annotated[str, AfterValidator(_unicode)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]  # a prompt already tokenised
Stop = Annotated[Text, Field(min_length=1, max_length=MAX_STOP_CHARS)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]


class SamplingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    DEFAULT_TOKENS: ClassVar[int | None] = None  # max_tokens left out: None = serve.max_new_tokens

    model: Text | None = None  # may be left out when the server serves one model
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)  # below 1e-5: greedy, as 0
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # not in OpenAI's API; the name vLLM and others accept
    repetition_penalty: float = Field(1.0, gt=0)  # likewise
    n: int = Field(1, ge=1)
    stop: Stop | list[Stop] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # OpenAI's int64
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    # read only to be refused (or, for response_format, to accept {"type": "text"}): not in /docs
    logit_bias: SkipJsonSchema[dict[str, float] | None] = None
    response_format: SkipJsonSchema[ResponseFormat | None] = None

    def refuse_unsupported(self) -> None:
        if self.logit_bias:
            raise Refused("logit_bias is not supported on this server; omit it", "logit_bias")
        if self.response_format is not None and self.response_format.type != "text":
            raise Refused(
                f"response_format {self.response_format.type!r} is not supported on this server: its decoding is "
                'not constrained to JSON, so a JSON answer could not be promised; omit it or send {"type": "text"}',
                "response_format",
            )

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def top_logprobs_wanted(self) -> int | None:
        """None: no log-probabilities; else how many alternatives per token (0: the chosen only)."""
        return None

    def sampling(self, max_new_tokens: int, defaults: dict, seed: int | None) -> Sampling:
        """The settings of one answer: the request's fields where it sets them, else the model's
        generation_config.json ``defaults``, else OpenAI's."""
        given: dict[str, Any] = {name: getattr(self, name) for name in OPENAI_SAMPLING if name in self.model_fields_set}
        top = self.top_logprobs_wanted
        given |= {
            "max_new_tokens": max_new_tokens,
            "stop": self.stops(),
            "seed": seed,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "logprobs": top is not None,
            "top_logprobs": top or 0,
        }
        model = {name: value for name, value in defaults.items() if name in OPENAI_SAMPLING}
        return with_defaults(given, model, OPENAI_SAMPLING)

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
    tool_calls: SkipJsonSchema[list[Any] | None] = None  # refused: no tools here
    function_call: SkipJsonSchema[Any] = None

    def as_template_message(self) -> dict:
        """developer is OpenAI's newer name for system; chat templates know system."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


NO_TOOLS = (
    "function calling is not supported on this server: its decoding is not constrained to a tool's schema, so a "
    "tool call could not be promised"
)


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)
    tools: SkipJsonSchema[list[Any] | None] = None  # refused, as the three below (but tool_choice "none"/"auto")
    tool_choice: SkipJsonSchema[Any] = None
    functions: SkipJsonSchema[list[Any] | None] = None
    function_call: SkipJsonSchema[Any] = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        for name in ("tools", "functions", "function_call"):
            if getattr(self, name):
                raise Refused(f"{name}: {NO_TOOLS}; omit {name}", name)
        if self.tool_choice not in (None, "none", "auto"):
            raise Refused(f"tool_choice: {NO_TOOLS}; omit tool_choice", "tool_choice")
        for i, message in enumerate(self.messages):
            if message.tool_calls or message.function_call:
                raise Refused(f"messages.{i}: tool calls and tool results need tools; {NO_TOOLS}", "messages")
        if self.top_logprobs and not self.logprobs:
            raise Refused("top_logprobs needs logprobs: true", "top_logprobs")

    @property
    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def wanted_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingRequest):
    DEFAULT_TOKENS: ClassVar[int | None] = 16  # OpenAI's default for completions

    # text, texts, or token ids (one prompt or several), as OpenAI takes them: evaluation harnesses
    # (lm-evaluation-harness' local-completions) send ids they tokenised with the model's tokenizer
    prompt: Text | list[Text] | TokenIds | list[TokenIds]
    max_tokens: int | None = Field(None, ge=0)  # 0 only with echo: the prompt's log-probabilities alone
    echo: bool = False
    logprobs: int | None = Field(None, ge=0)
    suffix: SkipJsonSchema[str | None] = None  # refused
    best_of: SkipJsonSchema[int | None] = None  # refused unless 1 or n

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.suffix is not None:
            raise Refused("suffix is not supported on this server (no fill-in-the-middle); omit it", "suffix")
        if self.best_of not in (None, 1, self.n):
            raise Refused(f"best_of={self.best_of} is not supported on this server; omit it (or send n)", "best_of")
        if self.max_tokens == 0 and not self.echo:
            raise Refused("max_tokens=0 asks for nothing; it is allowed with echo (the prompt scored)", "max_tokens")

    @property
    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    @property
    def prompts(self) -> list[str | list[int]]:
        one = isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int))
        prompts = [self.prompt] if one else self.prompt
        if not prompts:
            raise UserError("prompt: an empty list; send a string, a list of strings or of token ids")
        return prompts

    @property
    def wanted_tokens(self) -> int | None:
        return self.max_tokens
