"""Writing a model to ONNX and TorchScript files and running those files back."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

DEFAULT_OPSET = 18


def export_onnx(model: nn.Module, example: torch.Tensor, out: Path, opset: int = DEFAULT_OPSET) -> dict:
    """One self-contained .onnx file (no external data) with a dynamic batch axis."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    # the exporter logs a warning per missing torchvision op; we have no torchvision by design
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter narrates every pass it runs
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
        program.optimize()
        program.save(str(out), external_data=False)
    return {"opset": opset, "input": "input", "output": "logits"}


def onnx_session(path: Path, threads: int | None = None, spin: bool = True):
    """An ONNX Runtime CPU session over ``path``: ``threads`` intra-op threads (None: its default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        # worker threads that spin-wait between calls burn a core the server's event loop and
        # decoders need (0.7 ms of CPU per request with a small model); a batch call barely notices
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(path: Path, threads: int | None = None, spin: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    session = onnx_session(path, threads, spin)
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images.astype(np.float32, copy=False)})[0]


def export_torchscript(model: nn.Module, example: torch.Tensor, out: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is in maintenance; tracing still serves C++ users
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
        torch.jit.save(traced, str(out))
    return {"method": "trace"}


def torchscript_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(images)).float().numpy()

    return run
