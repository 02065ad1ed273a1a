"""Text generation with any Hugging Face causal LM: our own decoding loop, not ``model.generate``.

One loop serves the CLI, the chat REPL and PPO rollouts (the server decodes in a continuous batch
that requests join and leave, ``batching.py``, with the same sampling and bookkeeping): batched
prompts (left padding + attention mask), the KV cache (the model's ``past_key_values``; off for
the benchmark's baseline), greedy or sampled tokens (see ``sampling.py``), stop strings, the end
of turn, per-token log-probs, and text handed out piece by piece as it is made.

Generation ends at the end of an assistant's turn as the chat template writes it (or as the
package's ``modelcycle.json`` records it: ``lm.end_of_turn``; see ``end_of_turn.py``), at the
tokenizer's ``eos_token`` and at every id in the folder's ``generation_config.json``
``eos_token_id``: never at hard-coded ids, so a Qwen base whose turns end with ``<|im_end|>`` and
whose eos is ``<|endoftext|>`` stops at either.

    lm = load_lm("runs/lm-sft")
    [answer] = lm.generate([lm.chat_prompt([{"role": "user", "content": "Explain for"}])], Sampling(temperature=0))
    stream = lm.stream(["def f("], Sampling(max_new_tokens=20, seed=0))
    for piece in stream: print(piece.text, end="", flush=True)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import torch

from modelcycle.errors import UserError
from modelcycle.lm.answer import Answer, Generation
from modelcycle.lm.chat_template import chat_ids, encode_text
from modelcycle.lm.end_of_turn import end_of_turn_ids, recorded_end_of_turn
from modelcycle.lm.sampling import Sampling, choose


class PromptTooLong(UserError):
    """A prompt fills the model's whole context, so not one token could follow it."""


@dataclass
class Piece:
    """New text of prompt number ``index``."""

    index: int
    text: str


@torch.inference_mode()
def decode_steps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sampling: Sampling,
    eos_ids: Sequence[int],
    done: torch.Tensor,
    pad_id: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """The loop on tensors: per step (token per row, its log-prob or None), ``pad_id`` for rows
    already done. ``input_ids`` are left-padded (B, T). The caller may set ``done[row]`` between
    steps (a stop string, a row's own token limit); the loop ends when every row is done or after
    ``sampling.max_new_tokens`` steps."""
    device = input_ids.device
    count, width = input_ids.shape
    steps = sampling.max_new_tokens
    # room for every step made once: each step takes a view, not a copy of the growing mask
    mask = torch.cat([attention_mask.to(device), attention_mask.new_ones((count, steps), device=device)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from its first token
    sequence = torch.cat([input_ids, input_ids.new_full((count, steps), pad_id)], dim=1)
    seen = counts = None
    if sampling.counts_tokens:  # presence and frequency penalties: each generated token counted
        counts = torch.zeros(count, model.get_output_embeddings().weight.shape[0], device=device)
    if sampling.repetition_penalty != 1:
        vocab = model.get_output_embeddings().weight.shape[0]
        # counted, not scattered as booleans: a padding position must not unmark a real token of the same id
        seen = torch.zeros(count, vocab, dtype=torch.long, device=device)
        seen = seen.scatter_add_(1, input_ids, mask[:, :width].long()) > 0
    generator = None
    if sampling.seed is not None and not sampling.greedy:
        generator = torch.Generator(device).manual_seed(sampling.generator_seed)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    extra = {"logits_to_keep": 1} if _keeps_last_logits(model) else {}
    cache = None
    for step in range(steps):
        length = width + step
        # with the cache, only the newest token goes in (the whole prompt at the first step)
        first = 0 if cache is None else length - 1
        out = model(
            input_ids=sequence[:, first:length],
            attention_mask=mask[:, :length],
            position_ids=positions[:, first:length],
            past_key_values=cache,
            use_cache=sampling.use_cache,
            **extra,
        )
        tokens, logprobs = choose(out.logits[:, -1], seen, sampling, generator, counts)
        tokens = tokens.masked_fill(done, pad_id)
        if counts is not None:
            counts.scatter_add_(1, tokens[:, None], (~done).float()[:, None])
        yield tokens, logprobs
        done |= torch.isin(tokens, eos)
        if bool(done.all()) or step == steps - 1:
            return
        sequence[:, length] = tokens
        if seen is not None:
            seen.scatter_(1, tokens[:, None], True)
        if sampling.use_cache:
            cache = out.past_key_values


def _keeps_last_logits(model: torch.nn.Module) -> bool:
    """Most transformers causal LMs can skip the vocabulary projection for all but the last
    position (``logits_to_keep``), which saves most of a long prompt's projection cost."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


class GenerationStream:
    """Iterate for ``Piece``s of text as they are made; ``results`` holds one ``Generation`` per
    prompt once the iteration has ended. Breaking out early stops generation (a client left).
    ``steps()`` hands out the pieces of one decoding step at a time, so that a server can let
    several generations take turns token by token."""

    def __init__(self, lm: LanguageModel, prompts: list[list[int]], sampling: Sampling):
        self.lm, self.prompts, self.sampling = lm, prompts, sampling
        self.results: list[Generation] = []

    def __iter__(self) -> Iterator[Piece]:
        for pieces in self.steps():
            yield from pieces

    def steps(self) -> Iterator[list[Piece]]:
        """The new pieces of each decoding step (often none: a character still incomplete), then
        those that were held back; ``results`` is set before the last list."""
        lm, sampling = self.lm, self.sampling
        if sampling.top_logprobs:
            raise UserError(
                "Sampling(top_logprobs=...): the likeliest alternatives are recorded by the continuous batch "
                "(modelcycle.lm.batching), not by this loop; use logprobs=True alone here"
            )
        # each row may use the room its own prompt leaves in the context
        limits = [min(sampling.max_new_tokens, lm.context_length - len(p)) for p in self.prompts]
        answers = [Answer(lm.tokenizer, lm.eos_ids, p, sampling, n) for p, n in zip(self.prompts, limits, strict=True)]
        input_ids, mask = lm.pad_left(self.prompts)
        done = torch.zeros(len(answers), dtype=torch.bool, device=lm.device)
        steps = decode_steps(
            lm.model,
            input_ids,
            mask,
            replace(sampling, max_new_tokens=max(limits)),
            lm.eos_ids,
            done,
            lm.pad_id,
        )
        for tokens, step_logprobs in steps:
            made: list[Piece] = []
            chosen = tokens.tolist()
            chosen_logprobs = step_logprobs.tolist() if step_logprobs is not None else None
            for row in (~done).nonzero().flatten().tolist():
                piece = answers[row].take(chosen[row], chosen_logprobs[row] if chosen_logprobs else None)
                done[row] = answers[row].done  # an end of turn: the decoding loop marks it too
                if piece:
                    made.append(Piece(row, piece))
            yield made
        rests = [Piece(row, rest) for row, answer in enumerate(answers) if (rest := answer.finish())]
        self.results = [answer.generation() for answer in answers]
        yield rests


def _which(index: int | None) -> str:
    """How an error names a prompt: alone, or by its place in a list."""
    return "the prompt" if index is None else f"prompt {index}"


class LanguageModel:
    """A causal LM, its tokenizer and what ends its turns; made by ``load_lm``."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        name: str = "model",
        manifest: dict | None = None,
        end_of_turn: str | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.manifest = manifest
        self.device = next(model.parameters()).device
        config = model.config
        self.context_length: int = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
        # the token its training closed answers with (lm.end_of_turn), else the chat template's
        self.end_of_turn = end_of_turn or recorded_end_of_turn(manifest)
        setting = "lm.end_of_turn" if end_of_turn else "end_of_turn.token in its modelcycle.json"
        generation_config = getattr(model, "generation_config", None)
        self.eos_ids = end_of_turn_ids(tokenizer, generation_config, self.end_of_turn, setting)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def encode(self, prompt: str | list[int], special_tokens: bool = True) -> list[int]:
        """Token ids of a prompt (ids pass through). Text is text: a control token written in it
        (``<|im_start|>``) is encoded as its characters, never as the token, so a prompt cannot
        forge the turns of a chat; ``special_tokens`` adds what the tokenizer adds around a
        sequence (a bos token, for some)."""
        if isinstance(prompt, list):
            return prompt
        return encode_text(self.tokenizer, prompt, add_special_tokens=special_tokens)

    def check_fits(self, ids: list[int], index: int | None = None) -> None:
        if len(ids) >= self.context_length:
            raise PromptTooLong(
                f"{_which(index)} is {len(ids)} tokens, but this model's maximum context length is "
                f"{self.context_length} tokens, prompt and answer together; shorten the prompt"
            )

    @cached_property
    def vocab_size(self) -> int:
        """Token ids this model and its tokenizer both know: a prompt's ids must be below it."""
        return min(len(self.tokenizer), self.model.get_input_embeddings().num_embeddings)

    def check_ids(self, ids: list[int], index: int | None = None) -> None:
        """A prompt given as token ids holds only ids of this vocabulary (an unknown id would
        fail inside the model)."""
        if (bad := next((i for i in ids if i >= self.vocab_size), None)) is not None:
            raise UserError(
                f"{_which(index)} holds token id {bad}, but this model's vocabulary has ids 0 to "
                f"{self.vocab_size - 1}; tokenise with the model's own tokenizer"
            )

    @cached_property
    def chars_per_token(self) -> int:
        """The most characters one token can stand for (its vocabulary string, byte-level or
        SentencePiece, is never shorter than the text it decodes to; four times that where a
        normalizer may join characters before tokenising: NFC makes one Hangul syllable of three)."""
        longest = max((len(token) for token in self.tokenizer.get_vocab()), default=1)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        return max(longest, 1) * (4 if backend is None or backend.normalizer is not None else 1)

    def check_chars(self, chars: int, index: int | None = None) -> None:
        """A prompt of ``chars`` characters that cannot fit the context whatever its tokens is
        refused before any tokenising: a huge prompt costs no work."""
        if chars >= self.context_length * self.chars_per_token:
            raise PromptTooLong(
                f"{_which(index)} is {chars:,} characters, more than this model's maximum context length of "
                f"{self.context_length} tokens can hold (a token is at most {self.chars_per_token} characters); "
                "shorten the prompt"
            )

    def pad_left(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def stream(self, prompts: Sequence[str | list[int]], sampling: Sampling | None = None) -> GenerationStream:
        """Generate for a batch of prompts (text, or token ids such as ``chat_ids`` gives),
        handing out text as it comes. Raises ``PromptTooLong`` before any work."""
        if not prompts:
            raise UserError("no prompt to generate from")
        ids = [self.encode(p) for p in prompts]
        for i, prompt in enumerate(ids):
            if not prompt:
                raise UserError(f"prompt {i} is empty; give the model some text to continue")
            self.check_fits(prompt, None if len(ids) == 1 else i)
        return GenerationStream(self, ids, sampling or Sampling())

    def generate(self, prompts: Sequence[str | list[int]], sampling: Sampling | None = None) -> list[Generation]:
        stream = self.stream(prompts, sampling)
        for _ in stream:
            pass
        return stream.results

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The chat template applied to ``messages``, ready for the assistant's turn; the
        messages' content is always text (``lm/chat_template.py``). A template that fails raises
        a ``UserError`` that says so."""
        return chat_ids(self.tokenizer, messages, add_generation_prompt=True, name=self.name)
