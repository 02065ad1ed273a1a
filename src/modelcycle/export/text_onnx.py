"""Text classifiers (Hugging Face sequence classifiers) to ONNX, and running them back.

The file takes the inputs every ONNX text model takes, ``input_ids`` and ``attention_mask``
(int64, batch and sequence axes dynamic), and gives ``logits``, so ONNX Runtime and other
runtimes use it without modelcycle. Inside modelcycle a batch of texts travels as one int64
array (N, 2, L): ids and mask stacked, padded to the package's ``max_length``, which is what the
serving batcher stacks row by row and what :class:`PackedText` feeds the PyTorch model.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelcycle.export.metadata import TEXT_INPUTS, as_strings

INPUTS = tuple(TEXT_INPUTS)  # ("input_ids", "attention_mask")


class PackedText(nn.Module):
    """A sequence classifier that takes the packed (N, 2, L) ids+mask and returns logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=packed[:, 0], attention_mask=packed[:, 1]).logits


class _Named(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def encode(tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """(N, 2, max_length) int64: token ids and attention mask, cut and padded to ``max_length``."""
    enc = tokenizer(
        [str(t) for t in texts], padding="max_length", truncation=True, max_length=max_length, return_tensors="np"
    )
    return np.stack([enc["input_ids"], enc["attention_mask"]], axis=1).astype(np.int64)


def export_text_onnx(model: nn.Module, packed: torch.Tensor, out: Path, meta: dict, opset: int) -> dict:
    """One self-contained .onnx file with dynamic batch and sequence axes and ``meta`` (class
    names, tokenizer, max_length: export/metadata.py) in its metadata_props."""

    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=2, max=8192)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter narrates every pass it runs
        program = torch.onnx.export(
            _Named(model).eval(),
            (packed[:, 0].contiguous(), packed[:, 1].contiguous()),
            dynamo=True,
            opset_version=opset,
            input_names=list(INPUTS),
            output_names=["logits"],
            dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
            verbose=False,
        )
        program.optimize()
        program.model.metadata_props.update(as_strings(meta))
        program.save(str(out), external_data=False)
    return {"opset": opset, "input": list(INPUTS), "output": "logits"}


def text_onnx_runner(path: Path, threads: int | None = None, spin: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """packed (N, 2, L) int64 -> (N, classes) float32 logits, through ONNX Runtime."""
    from modelcycle.export.formats import onnx_session

    session = onnx_session(path, threads, spin)

    def run(packed: np.ndarray) -> np.ndarray:
        packed = packed.astype(np.int64, copy=False)
        return session.run(None, {INPUTS[0]: packed[:, 0], INPUTS[1]: packed[:, 1]})[0]

    return run


def text_torch_runner(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    packed_model = PackedText(model).eval()

    def run(packed: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return packed_model(torch.from_numpy(packed.astype(np.int64, copy=False))).float().numpy()

    return run
