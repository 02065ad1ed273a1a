"""``modelcycle export``: add an ONNX, TorchScript or torch.export (.pt2) file to a model package,
checked for parity and carrying its own class names and preprocessing (export/metadata.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from modelcycle.errors import UserError
from modelcycle.evaluation.inference import preprocess
from modelcycle.export import formats
from modelcycle.export.metadata import describe
from modelcycle.export.parity import check_parity
from modelcycle.export.text_onnx import PackedText, encode, export_text_onnx, text_onnx_runner
from modelcycle.packages import SEQUENCE, Package, open_package
from modelcycle.runs import Run, sha256_file, update_manifest
from modelcycle.tasks import registry

FORMATS = {
    "onnx": ("model.onnx", formats.export_onnx, formats.onnx_runner),
    "torchscript": ("model.torchscript.pt", formats.export_torchscript, formats.torchscript_runner),
    "pt2": ("model.pt2", formats.export_pt2, formats.pt2_runner),
}


def parity_images(path: Path, manifest: dict, data: str | Path | None, count: int) -> torch.Tensor:
    """Real images for the parity check: the run's validation split, or a manifest given."""
    from modelcycle.evaluation.evaluate import items_for

    run = Run.open(path) if (path / "config.yaml").is_file() else None
    items = items_for(run, manifest, "val", data)
    if not items:
        raise UserError("no validation images to check the export against; pass --data MANIFEST")
    # manifests are ordered by class: a seeded sample covers every class, the first N would not
    chosen = np.random.default_rng(0).permutation(len(items))[:count]
    return preprocess(manifest, [items[i] for i in sorted(chosen)])


def export(
    run: str | Path,
    fmt: str = "onnx",
    opset: int | None = None,
    data: str | Path | None = None,
    count: int = 64,
) -> dict:
    """Export into the package folder; the file is recorded in modelcycle.json only if it matches."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if opset is not None and fmt != "onnx":
        raise UserError(f"--opset {opset} is an ONNX setting; --format {fmt} has no opset: leave --opset out")
    path = Path(run)
    package = open_package(path)
    plugin = registry.for_package(path)
    if fmt not in plugin.export_formats:  # what the task's packages can be exported to is its plugin's word
        offers = f"exports to {' and '.join(plugin.export_formats)} only" if plugin.export_formats else "has no export"
        raise UserError(
            f"--format {fmt}: {package.folder} holds a model of task {plugin.name}, which {offers}; "
            "serve or evaluate it as it is (modelcycle serve, modelcycle evaluate)"
        )
    if package.kind == SEQUENCE:
        model, inputs, write, runner, filename = _text_parts(package, path, fmt, data, count)
        unit = "texts"
    else:
        model, manifest = package.load_vision(), package.manifest
        inputs = parity_images(path, manifest, data, count)
        filename, write, runner = FORMATS[fmt]
        unit = "images"
    manifest = package.manifest
    folder = package.folder
    out = folder / filename
    tmp = out.with_name(f"tmp-{os.getpid()}-{out.name}")  # torch.export.save wants the .pt2 ending
    try:
        options = {"opset": opset or formats.DEFAULT_OPSET} if fmt == "onnx" else {}
        details = write(model, inputs[:2], tmp, describe(manifest), **options)
        parity = check_parity(model, runner(tmp), inputs, f"the {fmt} export", unit=unit)
        os.replace(tmp, out)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - an exporter failure is reported, not a crash
        raise UserError(
            f"{fmt} export of {manifest['architecture']['name']} failed: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    record = {"file": filename, "sha256": sha256_file(out), "bytes": out.stat().st_size, **details, "parity": parity}
    update_manifest(folder, ["exports", fmt], record)
    return record


def _text_parts(package: Package, path: Path, fmt: str, data: str | Path | None, count: int):
    """A text classifier's model (taking packed ids+mask), parity texts, writer, runner, file name."""
    from modelcycle.evaluation.text import text_examples

    loaded = package.load_text_classifier()
    run = Run.open(path) if (path / "config.yaml").is_file() else None
    texts = [text for text, _ in text_examples(run, package.manifest, "val", data)]
    if not texts:
        raise UserError("no validation texts to check the export against; pass --data FILE.jsonl")
    chosen = np.random.default_rng(0).permutation(len(texts))[:count]
    packed = encode(
        loaded.tokenizer, [texts[i] for i in sorted(chosen)], package.manifest["preprocessing"]["max_length"]
    )

    def write(model, example, out, meta, opset):
        return export_text_onnx(loaded.model, example, out, meta, opset)

    return PackedText(loaded.model).eval(), torch.from_numpy(packed), write, text_onnx_runner, "model.onnx"
