"""Writing a model to ONNX, TorchScript and torch.export (.pt2) files and running those files back.

Every writer stores the metadata of export/metadata.py inside the file it writes."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelcycle.errors import UserError
from modelcycle.export.metadata import EXTRA_FILE, as_strings

DEFAULT_OPSET = 18


def export_onnx(model: nn.Module, example: torch.Tensor, out: Path, meta: dict, opset: int = DEFAULT_OPSET) -> dict:
    """One self-contained .onnx file (no external data) with a dynamic batch axis and ``meta``
    in its metadata_props."""
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
        program.model.metadata_props.update(as_strings(meta))
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


def export_torchscript(model: nn.Module, example: torch.Tensor, out: Path, meta: dict) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is in maintenance; tracing still serves C++ users
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
        torch.jit.save(traced, str(out), _extra_files={EXTRA_FILE: json.dumps(meta)})
    return {"method": "trace"}


def torchscript_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu").eval()
    return module_runner(module)


def export_pt2(model: nn.Module, example: torch.Tensor, out: Path, meta: dict) -> dict:
    """``torch.export`` (the whole graph, no tracing guesswork) saved with ``torch.export.save``,
    with a dynamic batch axis and ``meta`` as one of its extra files."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},), strict=False)
    except Exception as exc:  # noqa: BLE001 - torch.export's many error types all mean "cannot capture"
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UserError(
            f"torch.export cannot capture this model with a dynamic batch axis ({type(exc).__name__}: {first}); "
            "a forward that branches on tensor values or sizes is the usual cause. Export it with --format onnx "
            "(its exporter falls back to tracing) or --format torchscript (traced) instead; the parity check "
            "still tells whether the traced branch holds"
        ) from None
    torch.export.save(program, str(out), extra_files={EXTRA_FILE: json.dumps(meta)})
    return {"method": "torch.export", "input": "input", "output": "logits", "dynamic": ["batch"]}


def pt2_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A .pt2 file back through ``torch.export.load``. It unpickles what the archive holds, so
    modelcycle loads only the file its package's modelcycle.json names with a matching sha256."""
    return module_runner(torch.export.load(str(path)).module())


def module_runner(module: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    """(N, C, H, W) float32 images -> (N, classes) float32 logits through a module in eval mode."""

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(images)).float().numpy()

    return run
