"""``modelcycle bench``: every package and backend side by side on the same validation images:
status, file size, accuracy, batch-1 latency and batch-32 throughput."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelcycle.errors import UserError
from modelcycle.evaluation.evaluate import items_for
from modelcycle.evaluation.inference import predict_items, preprocess
from modelcycle.evaluation.speed import latency_ms, throughput
from modelcycle.export.export import export
from modelcycle.export.runtime import load_predictor
from modelcycle.progress import StepBar
from modelcycle.runs import Run, read_manifest

REFERENCE = "reference (PyTorch weights)"
VALIDATED = "exported and validated"
MISMATCH = "exported but validation failed"
FAILED = "export failed"
MEASURED = (REFERENCE, VALIDATED)


def bench(
    paths: list[str | Path], data: str | Path | None = None, seconds: float = 2.0, calls: int = 200
) -> list[dict]:
    """One row per (package, backend). Missing exports are attempted; a failure is a row, not a crash."""
    rows = []
    manifests = {path: read_manifest(path) for path in map(Path, paths)}
    with StepBar("bench", sum(len(_backends(m)) for m in manifests.values())) as bar:
        for path, manifest in manifests.items():
            primary = manifest.get("backend", "torch")
            run = Run.open(path) if (path / "config.yaml").is_file() else None
            items = items_for(run, manifest, "val", data)
            labels = np.array([label for _, label in items])
            images = preprocess(manifest, items[:256]).numpy()
            for backend in _backends(manifest):
                bar.update(status=f"{path.name}: {backend}")
                rows.append(_row(path, manifest, backend, primary, items, labels, images, data, seconds, calls))
                bar.line(f"bench {len(rows)}/{bar.total}  {path.name} {backend}: {rows[-1]['status']}")
                bar.update(completed=len(rows))
    return rows


def _backends(manifest: dict) -> list[str]:
    primary = manifest.get("backend", "torch")
    return ["torch", "torchscript", "onnx"] if primary == "torch" else [primary]


def _row(path, manifest, backend, primary, items, labels, images, data, seconds, calls) -> dict:
    name = "onnx int8" if "quantization" in manifest else backend
    row = {"package": str(path), "backend": name}
    if backend != primary and backend not in manifest.get("exports", {}):
        try:
            export(path, backend, data=data)
        except UserError as exc:
            row.update(status=MISMATCH if "does not match" in str(exc) else FAILED, error=str(exc))
            return row
    predictor = load_predictor(path, backend)
    folder = Path(predictor.manifest["_dir"])
    record = predictor.manifest["weights"] if backend == primary else predictor.manifest["exports"][backend]
    probs = predict_items(predictor, items)
    p50, p99 = latency_ms(predictor, images, calls)
    row.update(
        status=REFERENCE if backend == "torch" else VALIDATED,
        bytes=(folder / record["file"]).stat().st_size,
        accuracy=float((probs.argmax(1) == labels).mean()),
        images=len(items),
        latency_p50_ms=p50,
        latency_p99_ms=p99,
        throughput_b32=throughput(predictor, np.resize(images, (32, *images.shape[1:])), seconds),
    )
    return row
