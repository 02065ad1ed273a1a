"""A language-model run's sample generations (lm.sample_every) reach TensorBoard's text tab, by
step, the same as samples.jsonl holds them."""

from __future__ import annotations

import json

import pytest

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def test_sample_generations_are_logged_as_text(pretrained):
    acc = event_accumulator.EventAccumulator(str(pretrained / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    assert "samples/text_summary" in acc.Tags()["tensors"]  # add_text's tag for "samples"
    lines = [json.loads(line) for line in (pretrained / "samples.jsonl").read_text().splitlines()]
    events = acc.Tensors("samples/text_summary")
    assert [e.step for e in events] == sorted({line["step"] for line in lines})
    shown = events[-1].tensor_proto.string_val[0].decode()
    last = [line for line in lines if line["step"] == events[-1].step]
    assert all(line["prompt"] in shown and " ".join(line["text"].split()).replace("|", "\\|") in shown for line in last)
    assert "train/loss" in acc.Tags()["scalars"] and "val/perplexity" in acc.Tags()["scalars"]
