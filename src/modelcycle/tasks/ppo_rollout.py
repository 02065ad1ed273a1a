"""What PPO needs from a language model: a value head beside the policy, sampling with the
log-probabilities of what was sampled, and per-token figures of a (prompt + response) batch.

:func:`sample` is the one place that draws answers, through part 1's decoding loop
(``lm/generate.py::decode_steps``, KV cache, the global RNG that a PPO checkpoint saves). The
log-probabilities for the update come from a separate forward pass (:func:`response_figures`),
so the sampler only has to hand over the tokens and which of them are real.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modelcycle.lm.generate import decode_steps
from modelcycle.lm.sampling import Sampling
from modelcycle.tasks.preference_loss import token_logprobs


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as ``generate`` uses them: a plain forward would count
    the padding and see the prompt at other positions than it was sampled at."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


class PolicyWithValue(nn.Module):
    """The causal LM and a linear value head on its last hidden state (one value per position)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        hidden = lm.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)  # values start at 0: no early noise in the advantages
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions(attention_mask),
            output_hidden_states=True,
        )
        return out.logits, self.value_head(out.hidden_states[-1].float()).squeeze(-1)


@dataclass
class Rollout:
    """Prompt + response rows, left-padded prompts of width ``prompt_width``; ``mask`` (B, R)
    marks response tokens up to and including the first end token."""

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    prompt_width: int
    mask: torch.Tensor

    @property
    def responses(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_width :]

    def texts(self, tokenizer) -> list[str]:
        """Each response as text, up to its end token (special tokens dropped): what a reward
        model with any tokenizer scores."""
        counts = self.mask.sum(1).tolist()
        rows = zip(self.responses, counts, strict=True)
        return [tokenizer.decode(row[: int(n)].tolist(), skip_special_tokens=True) for row, n in rows]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :], mask[i, width - len(row) :] = torch.tensor(row), 1
    return ids, mask


def sample(
    lm: nn.Module,
    prompts: list[list[int]],
    pad_id: int | None,
    stop: list[int],
    max_new_tokens: int,
    temperature: float,
) -> Rollout:
    """One sampled answer per prompt (top-k and top-p off: PPO's log-probabilities must be the
    model's own distribution at ``temperature``). Padding is masked, so a tokenizer without a
    padding token (``pad_id`` None: Llama 3's) pads with the first stop token."""
    device = next(lm.parameters()).device
    pad_id = stop[0] if pad_id is None else pad_id
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    was_training = lm.training
    lm.eval()
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    # the loop writes pad_id for rows already done; a row's end token is its last real one
    steps = [tokens for tokens, _ in decode_steps(lm, ids, mask, sampling, stop, done, pad_id)]
    lm.train(was_training)
    # a copy made outside inference mode: the update's forward passes take these ids
    response = torch.stack(steps, 1).clone()
    ended = torch.isin(response, torch.tensor(stop, device=device))
    after_end = (ended.cumsum(-1) - ended.long()) > 0
    response_mask = (~after_end).long()
    sequences = torch.cat([ids, response], 1)
    return Rollout(sequences, torch.cat([mask, response_mask], 1), ids.shape[1], response_mask.float())


def response_figures(
    model: nn.Module, rollout: Rollout, temperature: float, with_values: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(log-probabilities, values or None, logits) of the response tokens, each (B, R[, V]): the
    logits at position t-1 predict token t, and the value there is that of the state before it."""
    start = rollout.prompt_width - 1
    if with_values:
        logits, values = model(rollout.sequences, rollout.attention_mask)
        values = values[:, start:-1]
    else:
        logits = model(
            input_ids=rollout.sequences,
            attention_mask=rollout.attention_mask,
            position_ids=positions(rollout.attention_mask),
        ).logits
        values = None
    logits = logits / temperature
    return token_logprobs(logits, rollout.sequences)[:, start:], values, logits[:, start:-1]
