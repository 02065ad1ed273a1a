"""Continuous batching: sequences join and leave one running batch between decoding steps, so
concurrent requests share each forward pass instead of taking turns.

The batch is a left-padded block: an attention mask (rows x columns), the model's KV cache
(``past_key_values``) with the same columns, each row's next position id (counted from its own
first token) and its last token. A step feeds every row its last token (one column more); a
newcomer is first prefilled alone or with the other newcomers of that step (its prompt, left
padded), then its cache is padded on the left to the batch's width, or the batch's to its, and
the two are stacked. A row that ends is dropped at once (its cache rows go, and columns that are
padding for every row left) so the batch is never wider than its longest sequence.

Each row samples with its own settings (``Answer.sampling``): greedy rows take one ``argmax``
together; the others go through ``sampling.choose`` one by one, with their own seeded generator,
so a seeded answer does not depend on which requests happen to run beside it. Padding is masked,
and each row's positions are its own, so a greedy answer is the same tokens alone or in a batch.

Caches that cannot be padded and stacked (sliding-window or linear-attention layers keep
something other than one key and value per position) are kept as separate cohorts, one forward
pass each per step: requests still advance together, step by step, without sharing a pass.
"""

from __future__ import annotations

import inspect
from dataclasses import replace

import torch

from modelcycle.errors import UserError
from modelcycle.lm.answer import Answer, Top
from modelcycle.lm.sampling import Sampling, choose, log_probs


class _Row:
    """One answer in the batch and its sampling state: the seeded generator, the tokens the
    repetition penalty lowers (prompt and answer) and the count of each generated token."""

    def __init__(self, answer: Answer, vocab: int, device: torch.device, echo: bool):
        self.answer, self.echo = answer, echo
        sampling = answer.sampling
        self.generator = None
        if sampling.seed is not None and not sampling.greedy:
            self.generator = torch.Generator(device).manual_seed(sampling.generator_seed)
        self.seen = None
        if sampling.repetition_penalty != 1:
            self.seen = torch.zeros(1, vocab, dtype=torch.bool, device=device)
            self.seen[0, torch.tensor(answer.prompt, device=device)] = True
        self.counts = torch.zeros(1, vocab, device=device) if sampling.counts_tokens else None
        self.plain = sampling.greedy and self.seen is None and self.counts is None and not sampling.logprobs

    def took(self, token: int) -> None:
        if self.seen is not None:
            self.seen[0, token] = True
        if self.counts is not None:
            self.counts[0, token] += 1


class _Cohort:
    """Rows decoded in one forward pass: their mask, cache, next positions and last tokens."""

    def __init__(self, rows: list[_Row], cache, mask: torch.Tensor, last: torch.Tensor):
        self.rows, self.cache, self.mask, self.last = rows, cache, mask, last
        self.positions = mask.sum(-1)  # each row's next position: its real tokens so far
        self.stackable = stackable(cache)

    def keep(self, kept: list[int]) -> None:
        """Only the rows ``kept`` stay (their order unchanged); columns that are now padding in
        every row go too."""
        if len(kept) == len(self.rows):
            return
        index = torch.tensor(kept, dtype=torch.long, device=self.mask.device)
        self.rows = [self.rows[i] for i in kept]
        self.mask, self.last, self.positions = self.mask[index], self.last[index], self.positions[index]
        self.cache.batch_select_indices(index)
        if self.stackable and self.rows:
            start = int(self.mask.any(0).int().argmax())
            if start:
                self.mask = self.mask[:, start:]
                for layer in self.cache.layers:
                    layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]

    def join(self, other: _Cohort) -> None:
        """``other``'s rows below these, both padded on the left to the wider of the two."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(other.mask, width)])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width, -2), _pad_left(theirs.keys, width, -2)])
            mine.values = torch.cat([_pad_left(mine.values, width, -2), _pad_left(theirs.values, width, -2)])
        self.rows += other.rows
        self.last = torch.cat([self.last, other.last])
        self.positions = torch.cat([self.positions, other.positions])


def stackable(cache) -> bool:
    """Whether ``cache`` keeps one key and value per position in every layer (transformers'
    ``DynamicLayer``), so that it can be padded on the left and stacked with another."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _pad_left(tensor: torch.Tensor, width: int, dim: int = -1) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class ContinuousBatch:
    """The sequences a model is generating. ``add`` answers (they join at the next ``step``),
    ``step`` to advance every one by a token, ``drop`` those nobody waits for any more. Used by
    one thread at a time (the server's generation worker)."""

    def __init__(self, lm):
        self.lm = lm
        self.model = lm.model
        self.vocab = self.model.get_output_embeddings().weight.shape[0]
        self.waiting: list[_Row] = []
        self.decoded = 0  # rows in the last step's decoding passes (not counting prefills)
        self.cohorts: list[_Cohort] = []
        self.last_logits = {"logits_to_keep": 1} if "logits_to_keep" in _parameters(self.model) else {}

    def __bool__(self) -> bool:
        return bool(self.waiting or self.cohorts)

    def add(self, answers: list[Answer], echo: bool = False) -> None:
        """``answers`` join at the next step; ``echo``: also the log-probabilities of their prompt
        tokens (``Answer.prompt_logprobs``), from a prefill that keeps every position's logits."""
        self.waiting += [_Row(a, self.vocab, self.lm.device, echo) for a in answers]

    def drop(self, answers: list[Answer]) -> None:
        gone = {id(a) for a in answers}
        self.waiting = [r for r in self.waiting if id(r.answer) not in gone]
        for cohort in self.cohorts:
            cohort.keep([i for i, r in enumerate(cohort.rows) if id(r.answer) not in gone])
        self.cohorts = [c for c in self.cohorts if c.rows]

    @torch.inference_mode()
    def step(self) -> list[tuple[Answer, str]]:
        """Prefill the newcomers (their first token), then one token for every row: the new text
        of each answer that has some. An answer that ended is ``done`` and has left the batch;
        its last piece (``Answer.finish``) is among those returned."""
        made: list[tuple[Answer, str]] = []
        running = list(self.cohorts)
        self.decoded = 0
        if self.waiting:
            newcomers, self.waiting = self.waiting, []
            echoed = [r for r in newcomers if r.echo]  # every position's logits: one at a time
            for group in [[r] for r in echoed] + ([plain] if (plain := [r for r in newcomers if not r.echo]) else []):
                cohort = self._prefill(group, made)
                if cohort is not None:
                    self._admit(cohort)
        for cohort in running:  # a newcomer stacked into one of them takes its second token now
            cohort.mask = torch.cat([cohort.mask, cohort.mask.new_ones((len(cohort.rows), 1))], dim=1)
            out = self.model(
                input_ids=cohort.last[:, None],
                attention_mask=cohort.mask,
                position_ids=cohort.positions[:, None],
                past_key_values=cohort.cache,
                use_cache=True,
                **self.last_logits,
            )
            cohort.positions = cohort.positions + 1
            self.decoded += len(cohort.rows)
            self._advance(cohort, out.logits[:, -1], made)
        self.cohorts = [c for c in self.cohorts if c.rows]
        return made

    def _prefill(self, rows: list[_Row], made: list) -> _Cohort | None:
        ids, mask = self.lm.pad_left([r.answer.prompt for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        echo = rows[0].echo
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **({} if echo else self.last_logits),
        )
        if out.past_key_values is None:
            raise UserError(f"{self.lm.name} returns no KV cache (past_key_values); the server needs one to batch")
        if echo:
            rows[0].answer.prompt_logprobs = _prompt_logprobs(rows[0].answer, out.logits[0].float())
        cohort = _Cohort(rows, out.past_key_values, mask, ids[:, -1])
        self._advance(cohort, out.logits[:, -1], made, first=True)
        return cohort if cohort.rows else None

    def _admit(self, cohort: _Cohort) -> None:
        into = next((c for c in self.cohorts if c.stackable and cohort.stackable), None)
        if into is None:
            self.cohorts.append(cohort)
        else:
            into.join(cohort)

    def _advance(self, cohort: _Cohort, logits: torch.Tensor, made: list, first: bool = False) -> None:
        """Each row's next token from ``logits`` (rows x vocabulary) into its answer; the rows
        that ended leave ``cohort``."""
        chosen = self._choose(cohort.rows, logits)
        kept = []
        for i, (row, (token, logprob, top)) in enumerate(zip(cohort.rows, chosen, strict=True)):
            answer = row.answer
            if first and answer.limit == 0:  # echo with max_tokens 0: the prompt's log-probs only
                answer.done = True
            else:
                row.took(token)
                if piece := answer.take(token, logprob, top):
                    made.append((answer, piece))
            if answer.done:
                if rest := answer.finish():
                    made.append((answer, rest))
            else:
                kept.append(i)
        cohort.last = torch.tensor([c[0] for c in chosen], device=logits.device)
        cohort.keep(kept)

    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> list[tuple[int, float | None, Top | None]]:
        greedy = logits.argmax(-1).tolist() if any(r.plain for r in rows) else None
        chosen = []
        for i, row in enumerate(rows):
            if row.plain:
                chosen.append((greedy[i], None, None))
                continue
            sampling = row.answer.sampling
            own = logits[i : i + 1]
            logprobs = log_probs(own, sampling) if sampling.logprobs else None
            token, logprob = choose(own, row.seen, sampling, row.generator, row.counts, logprobs)
            top = _top(logprobs[0], sampling.top_logprobs) if sampling.top_logprobs else None
            chosen.append((int(token), None if logprob is None else float(logprob), top))
        return chosen


def _top(logprobs: torch.Tensor, count: int) -> Top:
    values, ids = logprobs.topk(min(count, logprobs.shape[-1]))
    return list(zip(ids.tolist(), values.tolist(), strict=True))


def _prompt_logprobs(answer: Answer, logits: torch.Tensor) -> list[tuple[float, Top] | None]:
    """Per prompt token, its log-probability given the tokens before it (and the likeliest
    tokens there); None for the first, which nothing predicts. ``logits``: the prompt's own rows
    (it was prefilled alone, so it has no padding)."""
    sampling, prompt = answer.sampling, answer.prompt
    logprobs = log_probs(logits[: len(prompt) - 1], sampling)
    ids = torch.tensor(prompt[1:], device=logits.device)
    own = logprobs.gather(-1, ids[:, None]).squeeze(-1).tolist()
    count = max(sampling.top_logprobs, 0)
    tops = [_top(row, count) if count else [] for row in logprobs]
    return [None, *zip(own, tops, strict=True)]


def _parameters(model: torch.nn.Module):
    return inspect.signature(model.forward).parameters


def answers(lm, prompts: list, sampling: Sampling, n: int = 1, limit: int | None = None) -> list[Answer]:
    """``n`` answers to each prompt (text or token ids; checked as ``LanguageModel.stream``
    checks them: not empty, shorter than the context), prompt by prompt. Each may use the room
    its prompt leaves in the context, up to ``limit`` tokens (``sampling.max_new_tokens`` when
    None; 0: none, the prompt alone is scored). With a seed, answer ``j`` of a prompt samples
    with ``choice_seed(seed, j)``: the first with the seed itself, the others with their own."""
    ids = lm.stream(prompts, sampling).prompts  # encodes and checks; generates nothing
    limit = sampling.max_new_tokens if limit is None else limit
    made = []
    for prompt in ids:
        for j in range(n):
            own = replace(sampling, seed=choice_seed(sampling.seed, j))
            made.append(Answer(lm.tokenizer, lm.eos_ids, prompt, own, min(limit, lm.context_length - len(prompt))))
    return made


def choice_seed(seed: int | None, j: int) -> int | None:
    """The seed of choice ``j`` (``n`` > 1) of a request seeded with ``seed``: the seed for the
    first, then values far apart (a golden-ratio stride over 64 bits) for the others."""
    if seed is None or j == 0:
        return seed
    return (seed + j * 0x9E3779B97F4A7C15) % 2**64
