"""How the next token is chosen from a model's logits: greedy, temperature, top-k, top-p, the
repetition penalty and OpenAI's presence and frequency penalties, with seeded draws and the
log-probability of each chosen token (and of the likeliest alternatives).

Kept apart from the decoding loop so that the rules can be read (and tested) on plain tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from modelcycle.errors import UserError

GREEDY_BELOW = 1e-5  # a temperature under this is greedy: logits / T would overflow float32


@dataclass(frozen=True)
class Sampling:
    """One generation's settings. ``temperature=0`` is greedy decoding (the others then do not
    matter, except the repetition penalty); so is any temperature below ``GREEDY_BELOW``, where
    dividing the logits would overflow and the likeliest token wins anyway. ``seed`` (any integer
    from -2**63 to 2**64-1, as torch takes) makes sampling repeatable: the same prompts,
    batch and seed give the same tokens. ``use_cache=False`` recomputes the whole sequence every
    step (the KV cache's baseline in the benchmark). ``logprobs`` records, per chosen token, its
    log-probability under the model at this temperature (T=1 for greedy) before top-k, top-p and
    the repetition penalty: the "old policy" log-probs PPO needs; ``top_logprobs`` (with
    ``logprobs``) also the ``top_logprobs`` likeliest tokens of that distribution at each step.
    ``presence_penalty`` and ``frequency_penalty`` are OpenAI's: a token's logit goes down by
    ``presence_penalty`` once it has been generated and by ``frequency_penalty`` per time it has
    (negative values favour repeats); unlike the repetition penalty they count generated tokens
    only, not the prompt's."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1: no nucleus cut
    repetition_penalty: float = 1.0  # 1: none; >1 makes tokens already in the text less likely
    stop: tuple[str, ...] = ()  # text that ends generation (not included in the output)
    seed: int | None = None
    use_cache: bool = True
    logprobs: bool = False
    top_logprobs: int = 0  # with logprobs: this many likeliest alternatives per step
    presence_penalty: float = 0.0  # -2 to 2, as OpenAI's
    frequency_penalty: float = 0.0

    def __post_init__(self):
        checks = {  # written so that NaN fails every one
            "max_new_tokens": self.max_new_tokens >= 1,
            "temperature": 0 <= self.temperature <= 100,
            "top_k": self.top_k >= 0,
            "top_p": 0 < self.top_p <= 1,
            "repetition_penalty": 0 < self.repetition_penalty < math.inf,
            "seed": self.seed is None or -(2**63) <= self.seed < 2**64,
            "top_logprobs": self.top_logprobs >= 0 and (self.logprobs or not self.top_logprobs),
            "presence_penalty": -2 <= self.presence_penalty <= 2,
            "frequency_penalty": -2 <= self.frequency_penalty <= 2,
        }
        for name, ok in checks.items():
            if not ok:
                rule = {
                    "max_new_tokens": "at least 1",
                    "temperature": "from 0 (greedy) to 100",
                    "top_k": "0 (off) or more",
                    "top_p": "above 0 and at most 1",
                    "repetition_penalty": "above 0 and finite (1 is off)",
                    "seed": "an integer from -2**63 to 2**64-1",
                    "top_logprobs": "0 or more, and only with logprobs",
                    "presence_penalty": "from -2 to 2",
                    "frequency_penalty": "from -2 to 2",
                }[name]
                raise UserError(f"{name}={getattr(self, name)!r}: must be {rule}")
        if isinstance(self.stop, str):  # a lone string would be read as one stop per character
            object.__setattr__(self, "stop", (self.stop,))
        if any(not s for s in self.stop):
            raise UserError("stop: an empty stop string would end every generation at once; drop it")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def counts_tokens(self) -> bool:
        """Whether the presence or frequency penalty needs the count of each generated token."""
        return bool(self.presence_penalty or self.frequency_penalty)

    @property
    def generator_seed(self) -> int | None:
        """The seed as torch's generators take it (0 to 2**64-1)."""
        return None if self.seed is None else self.seed % 2**64


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """The CTRL paper's repetition penalty (as in transformers): a token already in the text has
    a positive logit divided by ``penalty`` and a negative one multiplied by it."""
    penalty = min(max(penalty, 1e-30), 1e30)  # beyond, float32 logits overflow (inf, 0 x inf = NaN)
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


def penalize_counts(logits: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float) -> torch.Tensor:
    """OpenAI's rule: ``logit - count * frequency - (count > 0) * presence`` for each token,
    ``counts`` being how often it was generated so far (B, V)."""
    return logits - counts * frequency - (counts > 0) * presence


def log_probs(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The model's log-probabilities at the sampling temperature (T=1 for greedy), before any cut
    or penalty: what ``logprobs`` reports."""
    return (logits.float() / (1.0 if sampling.greedy else sampling.temperature)).log_softmax(-1)


def top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask to -inf every token outside the ``top_k`` best and outside the smallest set whose
    probability reaches ``top_p`` (the best token always stays)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probs = ordered.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # the mass before this token already reaches top_p
        drop[..., 0] = False  # the best token always stays (a top_p below float32's smallest is not 0)
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return logits


def choose(
    logits: torch.Tensor,
    seen: torch.Tensor | None,
    sampling: Sampling,
    generator: torch.Generator | None,
    counts: torch.Tensor | None = None,
    logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(next token per row, its log-probability or None) from the last position's logits (B, V).
    ``seen`` marks the tokens the repetition penalty lowers, ``counts`` counts the generated
    ones for the presence and frequency penalties; ``logprobs``: ``log_probs`` already computed."""
    logits = logits.float()
    temperature = 1.0 if sampling.greedy else sampling.temperature
    if sampling.logprobs and logprobs is None:
        logprobs = log_probs(logits, sampling)
    if seen is not None:
        logits = penalize(logits, seen, sampling.repetition_penalty)
    if counts is not None:
        logits = penalize_counts(logits, counts, sampling.presence_penalty, sampling.frequency_penalty)
    if sampling.greedy:
        tokens = logits.argmax(-1)
    else:
        probs = top_k_top_p(logits / temperature, sampling.top_k, sampling.top_p).softmax(-1)
        broken = ~torch.isfinite(probs).all(-1) | ~(probs.sum(-1) > 0)
        if bool(broken.any()):  # extreme settings overflowed a row: its likeliest token, not a crash
            probs[broken] = torch.nn.functional.one_hot(logits[broken].nan_to_num().argmax(-1), probs.shape[-1]).to(
                probs.dtype
            )
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    chosen = logprobs.gather(-1, tokens[:, None]).squeeze(-1) if logprobs is not None else None
    return tokens, chosen
