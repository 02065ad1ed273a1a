"""The reference profile: what the training data looked like to the model, stored in the package
(``model/monitor_profile.json``) so that served traffic can be compared with it later.

It is computed on validation images (the training split when there is none), through the same
preprocessing the model uses, at the end of training or, for an older package, on first
``serve --monitor`` or with ``modelcycle profile RUN``.

The embedding. The penultimate activations (the input of the classifier's ``head``) are
recorded offline with the PyTorch model. An ONNX or TorchScript server cannot hand them out,
and changing the exported graphs or the request path for them would cost every request. But
the logits are the head applied to them, ``logits = W e + b``: so the part of the embedding the
head reads (its projection onto W's row space, where every prediction is decided) is an exact
linear function of the logits. The profile keeps the principal components of that part and the
``k x classes`` matrix that maps logits to their whitened coordinates, and any backend can
compute them for the price of one small matrix product. What the head does not read cannot
change a prediction; ``head_variance_share`` says how much of the embedding's variance it reads.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import torch

from modelcycle.config import MonitorSection
from modelcycle.data.datasets import make_loader
from modelcycle.data.images import header_size
from modelcycle.data.manifest import PreparedData
from modelcycle.errors import UserError
from modelcycle.evaluation.inference import data_section
from modelcycle.monitor import features as feats
from modelcycle.monitor.drift import bin_edges, shares
from modelcycle.monitor.profile_recorder import Outputs, classifier_head, head_arrays, sample_indices
from modelcycle.packages import load_model
from modelcycle.progress import progress_bar, warn
from modelcycle.runs import package_dir, read_manifest

PROFILE = "monitor_profile.json"
FORMAT = "modelcycle.monitor-profile/1"
SAMPLE = 1000  # reference values kept per feature for the Kolmogorov-Smirnov test
COMPONENTS = 8  # principal components of the embedding


def profile_path(package: str | Path) -> Path:
    return package_dir(package) / PROFILE


def read_profile(package: str | Path) -> dict | None:
    """The package's profile, or None when it has none or one of other weights (a retrained model)."""
    path = profile_path(package)
    if not path.is_file():
        return None
    try:
        profile = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); delete it and run `modelcycle profile` again") from None
    if profile.get("format") != FORMAT:
        raise UserError(f"{path}: unknown profile format {profile.get('format')!r}; run `modelcycle profile` again")
    if profile["weights_sha256"] != read_manifest(package)["weights"]["sha256"]:
        return None
    return profile


def ensure_profile(package: str | Path, cfg: MonitorSection, data: str | Path | None = None) -> dict:
    return read_profile(package) or write_profile(package, cfg, data)


def write_profile(package: str | Path, cfg: MonitorSection, data: str | Path | None = None, recorded=None) -> dict:
    """Compute the profile on ``data`` (a manifest; default the package's validation split) and
    write it into the package, atomically. ``recorded`` (a ``ValidationRecorder``) holds the
    model's outputs on the validation images when training recorded them for these weights."""
    manifest = read_manifest(package)
    reference = _reference_items(manifest, data, cfg.profile_images)
    outputs = recorded.outputs_for(reference[0]) if recorded is not None and data is None else None
    profile = build_profile(manifest, reference, cfg.ood_quantile, outputs)
    path = Path(manifest["_dir"]) / PROFILE
    tmp = path.with_name(f"{PROFILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(profile))
    os.replace(tmp, path)
    return profile


def profile_after_training(package: Path, cfg: MonitorSection, recorded=None) -> None:
    """The training run's last step. The model is trained and packaged by now: a profile that
    cannot be made (no images left to profile) is a warning with the fix, not a failed run.
    ``recorded``: the validation pass of the packaged epoch, when it could be recorded (then the
    profile costs no pass of its own; see monitor/profile_recorder.py)."""
    try:
        write_profile(package, cfg, recorded=recorded)
    except UserError as exc:
        warn(f"no monitoring profile in {package}: {exc}")


def _reference_items(manifest: dict, data: str | Path | None, limit: int) -> tuple[list, str]:
    if data is not None:
        from modelcycle.evaluation.evaluate import items_for  # scikit-learn's metrics: seconds, only for --data

        items, source = items_for(None, manifest, "val", data), str(data)
    else:
        root = manifest.get("data_root")
        if root is None or not Path(root).is_dir():
            raise UserError(
                f"{manifest['_dir']}: the data it was trained on ({root}) is not there to profile; "
                "pass a manifest of typical images: `modelcycle profile RUN --data MANIFEST`"
            )
        prepared = PreparedData.open(root)
        split = "val" if prepared.has_split("val") else "train"
        items, source = prepared.split(split), f"{root} ({split} split)"
    if not items:
        raise UserError(f"{source} holds no images to profile; pass --data MANIFEST")
    return [items[i] for i in sample_indices(len(items), limit)], source


def _run_all(manifest: dict, items: list) -> Outputs:
    """Input features, logits and (PyTorch packages) embeddings and head of every reference image,
    from a pass of their own."""
    cfg = data_section(manifest, workers=0)
    loader = make_loader(items, PreparedData(Path("."), manifest["classes"], {}), cfg, cfg.channels, 128, False)
    mean, std = feats.pixel_scale(manifest["preprocessing"])
    torch_weights = manifest.get("backend", "torch") == "torch"
    model, head, captured = None, None, []
    if torch_weights:
        model, _ = load_model(manifest["_dir"])
        head = classifier_head(model)
    if head is not None:
        head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach().float()))
        run = lambda x: model(torch.from_numpy(x)).float().numpy()  # noqa: E731
    else:
        from modelcycle.export.runtime import load_predictor  # an exported package: ONNX Runtime and the like

        run = load_predictor(manifest["_dir"], "auto")
    columns: dict[str, list] = {}
    logits = []
    with progress_bar("reference profile", len(items)) as advance, torch.no_grad():
        for images, _ in loader:
            batch = images.numpy()
            for name, values in feats.input_features(batch, mean, std).items():
                columns.setdefault(name, []).append(values)
            logits.append(run(batch))
            advance(len(batch))
    return Outputs(
        {k: np.concatenate(v) for k, v in columns.items()},
        np.concatenate(logits).astype(np.float64),
        torch.cat(captured).numpy().astype(np.float64) if captured else None,
        head_arrays(head),
    )


def build_profile(
    manifest: dict, reference: tuple[list, str], ood_quantile: float, outputs: Outputs | None = None
) -> dict:
    """The profile of the reference images; ``outputs`` are the model's on exactly those images
    (in order) when a validation pass recorded them, else they come from a pass of their own."""
    items, source = reference
    columns, logits, embeddings, head = outputs or _run_all(manifest, items)
    # the file's own size, from its header (the loader hands over resized tensors)
    columns = {**columns, feats.SIZE: np.asarray([feats.image_side(*header_size(path)) for path, _ in items])}
    embedding = None
    if head is not None and embeddings is not None:
        weight, bias = head
        # a model that does more after this Linear (a user's file) breaks logits = W e + b: no embedding then
        if np.allclose(embeddings @ weight.T + bias, logits, rtol=1e-3, atol=1e-3 * max(1.0, np.abs(logits).max())):
            embedding = embedding_summary(embeddings, weight, bias)
    out = feats.output_features(logits, logit_map(embedding))
    columns["confidence"] = out["confidence"]
    labels = np.asarray([label for _, label in items])
    rng = np.random.default_rng(0)
    classes = manifest["classes"]
    profile = {
        "format": FORMAT,
        "weights_sha256": manifest["weights"]["sha256"],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": source,
        "images": len(items),
        "accuracy": float((out["label"] == labels).mean()),
        "channels": manifest["preprocessing"]["channels"],
        "classes": classes,
        "features": {name: _numeric(values, rng) for name, values in columns.items()},
        "class_shares": (np.bincount(out["label"], minlength=len(classes)) / len(items)).tolist(),
        "confidence_histogram": {
            "edges": np.linspace(0, 1, 21).tolist(),
            "counts": np.histogram(out["confidence"], np.linspace(0, 1, 21))[0].tolist(),
        },
        "ood": {"quantile": ood_quantile, "threshold": float(np.quantile(out["confidence"], ood_quantile))},
        "embedding": embedding,
    }
    if embedding is not None:
        embedding["sample"] = _sample(out["embedding"], rng).tolist()
    return profile


def _sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(values) > SAMPLE:
        values = values[np.sort(rng.choice(len(values), SAMPLE, replace=False))]
    return values.astype(np.float32).astype(np.float64)  # float32 precision: half the JSON


def _numeric(values: np.ndarray, rng: np.random.Generator) -> dict:
    edges = bin_edges(values)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "edges": edges.tolist(),
        "shares": shares(values, edges).tolist(),
        "sample": _sample(values, rng).tolist(),
    }


def embedding_summary(embeddings: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> dict | None:
    """Mean and principal components of the embedding's head-read part, and the logits -> whitened
    coordinates map ``z = A @ logits + c`` (see the module docstring for why this is exact).
    None when the reference images do not vary along anything the head reads (one image, say)."""
    mean = embeddings.mean(0)
    centred = embeddings - mean
    u, s, vt = np.linalg.svd(weight, full_matrices=False)  # W = U S Vt
    rank = int((s > s[0] * 1e-6).sum())
    u, s, vt = u[:, :rank], s[:rank], vt[:rank]
    read = centred @ vt.T  # coordinates in the head's row space
    cov = read.T @ read / max(len(read) - 1, 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    k = int(min(COMPONENTS, (values > values.max() * 1e-9).sum())) if values.max() > 0 else 0
    if k == 0:
        return None
    rotation, variance = vectors[:, order[:k]].T, values[order[:k]]
    scale = 1.0 / np.sqrt(variance)
    matrix = (scale[:, None] * rotation) @ np.diag(1.0 / s) @ u.T
    offset = -matrix @ (weight @ mean + bias)
    return {
        "layer": "input of the classifier head",
        "dim": int(embeddings.shape[1]),
        "mean": mean.tolist(),
        "basis": (rotation @ vt).tolist(),  # k x dim, orthonormal rows
        "explained_variance": variance.tolist(),
        "head_variance_share": float(np.trace(cov) / max(centred.var(0, ddof=1).sum(), 1e-12)),
        "from_logits": {"matrix": matrix.tolist(), "offset": offset.tolist()},
    }


def logit_map(embedding: dict | None) -> tuple[np.ndarray, np.ndarray] | None:
    """A profile's logits -> embedding-coordinates map, or None when it has no embedding."""
    if embedding is None:
        return None
    return np.asarray(embedding["from_logits"]["matrix"]), np.asarray(embedding["from_logits"]["offset"])
