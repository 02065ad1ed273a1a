"""How the next token is chosen from a model's logits: greedy, temperature, top-k, top-p and the
repetition penalty, with seeded draws and the log-probability of each chosen token.

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
    the repetition penalty: the "old policy" log-probs PPO needs."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1: no nucleus cut
    repetition_penalty: float = 1.0  # 1: none; >1 makes tokens already in the text less likely
    stop: tuple[str, ...] = ()  # text that ends generation (not included in the output)
    seed: int | None = None
    use_cache: bool = True
    logprobs: bool = False

    def __post_init__(self):
        checks = {  # written so that NaN fails every one
            "max_new_tokens": self.max_new_tokens >= 1,
            "temperature": 0 <= self.temperature <= 100,
            "top_k": self.top_k >= 0,
            "top_p": 0 < self.top_p <= 1,
            "repetition_penalty": 0 < self.repetition_penalty < math.inf,
            "seed": self.seed is None or -(2**63) <= self.seed < 2**64,
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
    def generator_seed(self) -> int | None:
        """The seed as torch's generators take it (0 to 2**64-1)."""
        return None if self.seed is None else self.seed % 2**64


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """The CTRL paper's repetition penalty (as in transformers): a token already in the text has
    a positive logit divided by ``penalty`` and a negative one multiplied by it."""
    penalty = min(max(penalty, 1e-30), 1e30)  # beyond, float32 logits overflow (inf, 0 x inf = NaN)
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


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
    logits: torch.Tensor, seen: torch.Tensor | None, sampling: Sampling, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(next token per row, its log-probability or None) from the last position's logits (B, V)."""
    logits = logits.float()
    temperature = 1.0 if sampling.greedy else sampling.temperature
    logprobs = (logits / temperature).log_softmax(-1) if sampling.logprobs else None
    if seen is not None:
        logits = penalize(logits, seen, sampling.repetition_penalty)
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
