"""``modelcycle evaluate`` for language models: perplexity on held-out text, and for chat data
the loss on held-out answers plus a table of the model's own answers to held-out prompts.

Perplexity on text is measured on the same packed sequences training validates on, and next to
it a bigram model with add-one smoothing, counted on the run's training tokens and scored on the
very same held-out token pairs: the floor any language model must clear (the quality gate).
On chat data ``perplexity`` is ``exp(answer_loss)``, the per-token perplexity of the answers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from modelcycle.data.lm_data import (
    chat_rows,
    is_chat_file,
    lm_loader,
    pack,
    packed_rows,
    read_conversations,
    token_stream,
)
from modelcycle.errors import UserError
from modelcycle.lm.end_of_turn import recorded_end_of_turn
from modelcycle.lm.generate import LanguageModel
from modelcycle.lm.load import open_lm
from modelcycle.lm.sampling import Sampling
from modelcycle.packages import report_folder
from modelcycle.progress import progress_bar
from modelcycle.runs import Run
from modelcycle.tasks import registry
from modelcycle.tasks.lm import NextTokenTask
from modelcycle.tasks.sft import chats

DEFAULT_CONTEXT = 256  # a bare Hugging Face folder names no training context


def mean_loss(model, rows: list[dict], pad_id: int, batch_size: int, what: str) -> tuple[float, int]:
    """(mean next-token loss over labelled tokens, their count)."""
    task, sums = NextTokenTask(), {"loss": 0.0, "tokens": 0.0}
    loader = lm_loader(rows, pad_id, batch_size, train=False)
    with torch.no_grad(), progress_bar(what, len(loader)) as advance:
        for batch in loader:
            for key, value in task.validation_step(model, batch).items():
                sums[key] += float(value)
            advance(1)
    return sums["loss"] / max(sums["tokens"], 1.0), int(sums["tokens"])


def bigram_perplexity(train: torch.Tensor, held_out: torch.Tensor, vocab: int) -> float:
    """Perplexity of an add-one smoothed bigram model counted on the pairs inside ``train``'s
    sequences and scored on the pairs inside ``held_out``'s (the pairs the LM predicts too)."""
    pairs = train[:, :-1].reshape(-1).numpy().astype(np.int64) * vocab + train[:, 1:].reshape(-1).numpy()
    counts = np.bincount(pairs, minlength=vocab * vocab).reshape(vocab, vocab)
    context = counts.sum(1)
    prev, nxt = held_out[:, :-1].reshape(-1).numpy(), held_out[:, 1:].reshape(-1).numpy()
    log_p = np.log(counts[prev, nxt] + 1.0) - np.log(context[prev] + vocab)
    return float(math.exp(-log_p.mean()))


def _data_files(run: Run | None, manifest: dict | None, data: str | Path | None) -> list[str]:
    if data is not None:
        return [str(data)]
    files = run.config.lm.val_files if run else (manifest or {}).get("lm", {}).get("val_files", [])
    if not files:
        raise UserError("no held-out data: the run names no lm.val_files; pass --data FILE (.txt or .jsonl)")
    return list(files)


def evaluate_lm(
    run: str | Path | Run, data: str | Path | None = None, samples: int | None = None, report: bool = True
) -> dict:
    """Perplexity (and for chat data answer loss and sample answers) of a run's model, a package
    or a plain Hugging Face folder; with ``report`` writes ``report/metrics.json`` and
    ``report/samples.md``. ``samples`` overrides lm.eval_samples (0: no answers generated)."""
    path = run.path if isinstance(run, Run) else Path(run)
    run_obj = Run.open(path) if (path / "config.yaml").is_file() else None
    model, tokenizer, manifest = open_lm(path)
    lm = run_obj.config.lm if run_obj else None
    context = lm.context_length if lm else (manifest or {}).get("lm", {}).get("context_length", DEFAULT_CONTEXT)
    files = _data_files(run_obj, manifest, data)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = run_obj.config.eval.batch_size if run_obj else 32
    task = registry.for_manifest(manifest).name  # a downloaded folder records none: the task that opens it
    result: dict = {"task": task, "data": files, "answer_loss": None, "samples": []}
    if all(is_chat_file(f) for f in files):
        end = recorded_end_of_turn(manifest)  # the token its training closed answers with
        rows = chat_rows(chats(files, tokenizer, context, end), context, packing=False)
        loss, tokens = mean_loss(model, rows, pad, batch, "answer loss")
        count = (lm.eval_samples if lm else 8) if samples is None else samples
        result |= {"answer_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens}
        answering = LanguageModel(model, tokenizer, manifest=manifest)
        result["samples"] = sample_answers(answering, files, count, lm.eval_tokens if lm else 160)
        ended = [s["ended"] for s in result["samples"]]
        result["samples_ended"] = sum(ended) / len(ended) if ended else None
    else:
        held_out = pack(token_stream(files, tokenizer), context, ", ".join(files))
        loss, tokens = mean_loss(model, packed_rows(held_out), pad, batch, "perplexity")
        result |= {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens}
        if lm and lm.train_files and not any(is_chat_file(f) for f in lm.train_files):
            train = pack(token_stream(lm.train_files, tokenizer), context, ", ".join(lm.train_files))
            result["bigram_perplexity"] = bigram_perplexity(train, held_out, len(tokenizer))
    if not report:
        return result
    out = run_obj.report_dir if run_obj else report_folder(path)  # a Hub model: reports/OWNER--NAME
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    _write_samples(out / "samples.md", result["samples"])
    result["report"] = str(out / "metrics.json")
    return result


def sample_answers(lm: LanguageModel, files: list[str], count: int, tokens: int) -> list[dict]:
    """Greedy answers to the first held-out prompts with distinct reference answers (those that
    leave the model room to answer); ``ended``: the answer ended with the end-of-turn token.
    Conversations with tools are left out: a sample is a plain text answer to a plain chat (their
    turns still count in the answer loss)."""
    chosen, prompts, seen = [], [], set()
    for messages in (c for f in files for c in read_conversations(f)):
        if _uses_tools(messages):
            continue
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if not messages[last]["content"] or messages[last]["content"] in seen:
            continue
        ids = lm.chat_ids(messages[:last])
        if len(ids) >= lm.context_length:
            continue
        seen.add(messages[last]["content"])
        chosen.append((messages[:last], messages[last]["content"]))
        prompts.append(ids)
        if len(chosen) >= count:
            break
    answers = []
    if prompts:  # token by token, so that a bar can say how far the answers are
        stream = lm.stream(prompts, Sampling(temperature=0, max_new_tokens=tokens))
        with progress_bar(f"sample answers ({len(prompts)} prompts, tokens)", tokens) as advance:
            for step, _ in enumerate(stream):
                advance(step < tokens)  # the last piece is what the decoder held back, not a step
        answers = stream.results
    return [
        {"prompt": m[-1]["content"], "answer": a.text, "reference": ref, "ended": a.finish_reason == "stop"}
        for (m, ref), a in zip(chosen, answers, strict=True)
    ]


def _uses_tools(messages: list[dict]) -> bool:
    return bool(getattr(messages, "tools", None)) or any("tool_calls" in m or m["role"] == "tool" for m in messages)


def _write_samples(path: Path, samples: list[dict]) -> None:
    lines = ["| prompt | answer | ended |", "|---|---|---|"]
    for s in samples:
        cells = [" ".join(str(v).split()).replace("|", "\\|") for v in (s["prompt"], s["answer"])]
        lines.append(f"| {cells[0]} | {cells[1]} | {'yes' if s['ended'] else 'no'} |")
    path.write_text("\n".join(lines) + "\n" if samples else "")


def quality_gates(pretrain: str | Path, sft: str | Path) -> list[dict]:
    """The issue's gates on a pretraining run and an SFT run started from it: pretraining beats
    the add-one bigram on held-out text; SFT lowers the held-out answer loss against the
    pretrained base (both scored on the SFT run's held-out conversations); answers end with the
    end-of-turn token (at least 80 % of the sample answers)."""
    text = evaluate_lm(pretrain, report=False)
    if "bigram_perplexity" not in text:
        raise UserError(
            f"{pretrain} is not a pretraining run on text files; pass the run `modelcycle lm pretrain` made"
        )
    tuned = evaluate_lm(sft, report=False)
    if tuned["answer_loss"] is None:
        raise UserError(f"{sft} holds no held-out conversations (lm.val_files); pass an SFT run")
    base = evaluate_lm(pretrain, data=tuned["data"][0], samples=0, report=False)
    ended = tuned["samples_ended"] or 0.0
    return [
        {
            "gate": "pretraining beats an add-one bigram on held-out text (perplexity)",
            "value": text["perplexity"],
            "baseline": text["bigram_perplexity"],
            "passed": text["perplexity"] < text["bigram_perplexity"],
        },
        {
            "gate": "SFT lowers the held-out answer loss against the pretrained base",
            "value": tuned["answer_loss"],
            "baseline": base["answer_loss"],
            "passed": tuned["answer_loss"] < base["answer_loss"],
        },
        {
            "gate": f"sample answers that end with the end-of-turn token ({len(tuned['samples'])} prompts)",
            "value": ended,
            "baseline": 0.8,
            "passed": ended >= 0.8,
        },
    ]
