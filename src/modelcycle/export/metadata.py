"""What an exported file says about itself, so that the file alone is enough to use it.

A user who copies only ``model.onnx`` (or ``model.pt2``, ``model.torchscript.pt``) out of the
package still needs the class names in index order, the exact preprocessing, the input and output
names and what the output means (logits, not probabilities). Those travel inside the file:
ONNX ``metadata_props`` (string to string; lists and objects as JSON text), read back with
``InferenceSession.get_modelmeta().custom_metadata_map`` or ``onnx.load(f).metadata_props``; and
one JSON file, :data:`EXTRA_FILE`, among the ``extra_files`` of a .pt2 or TorchScript archive.
"""

from __future__ import annotations

import json
from pathlib import Path

from modelcycle._version import __version__
from modelcycle.errors import UserError

FORMAT = "modelcycle.export/1"
EXTRA_FILE = "modelcycle-metadata.json"  # the name inside .pt2 and TorchScript archives
JSON_KEYS = ("classes", "preprocessing", "inputs", "outputs", "compression")  # JSON text in ONNX metadata_props

# the inputs every ONNX text model takes (export/text_onnx.py names the graph's inputs so)
TEXT_INPUTS = {"input_ids": "token ids from the tokenizer", "attention_mask": "1 for real tokens, 0 for padding"}

# what evaluation.inference.preprocess does (data/transforms.py build_transform, data/images.py load_image)
RESIZE = {
    True: "shorter side resized to resize_to, keeping the aspect ratio",
    False: "both sides resized to resize_to (stretched)",
}
RESIZE_DETAIL = (
    "EXIF orientation applied first; area interpolation when shrinking, bilinear when enlarging; "
    "then the centre image_size x image_size crop"
)
LOGITS = (
    "logits: unnormalised class scores, shape (batch, number of classes); softmax over the last axis gives "
    "probabilities, and index i is classes[i]"
)


def describe(manifest: dict) -> dict:
    """The metadata of an export of the package ``manifest`` describes (image or text classifier)."""
    pre = manifest["preprocessing"]
    inputs, preprocessing = _text_inputs(pre) if "max_length" in pre else _image_inputs(pre)
    logits = {"name": "logits", "dtype": "float32", "shape": ["batch", len(manifest["classes"])], "meaning": LOGITS}
    meta = {
        "format": FORMAT,
        "task": manifest["task"],
        "classes": list(manifest["classes"]),
        "preprocessing": preprocessing,
        "inputs": inputs,
        "outputs": [logits],
        "architecture": _architecture(manifest),
        "modelcycle_version": __version__,
        "source_run": manifest.get("source_run") or manifest.get("source_package") or "",
        "source_weights_sha256": manifest.get("weights", {}).get("sha256", ""),
    }
    compression = {k: manifest[k] for k in ("pruning", "quantization") if k in manifest}
    if compression:
        meta["compression"] = compression
    return meta


def _architecture(manifest: dict) -> str:
    arch = manifest.get("architecture")
    if isinstance(arch, dict):
        return str(arch.get("name", ""))
    return str(arch or "")


def _image_inputs(pre: dict) -> tuple[list[dict], dict]:
    channels, size = int(pre["channels"]), int(pre["image_size"])
    keep_aspect = bool(pre.get("keep_aspect", True))
    preprocessing = {
        "image_size": size,
        "channels": channels,
        "channel_order": "greyscale" if channels == 1 else "RGB",
        "resize_to": int(pre.get("resize_to") or size),
        "keep_aspect": keep_aspect,
        "resize": f"{RESIZE[keep_aspect]}; {RESIZE_DETAIL}",
        "pixel_scale": 1 / 255,
        "mean": list(pre["mean"]),
        "std": list(pre["std"]),
        "normalise": "(pixel * pixel_scale - mean) / std, per channel, pixels 0..255",
        "layout": "NCHW",
        "dtype": "float32",
    }
    image = {
        "name": "input",
        "dtype": "float32",
        "shape": ["batch", channels, size, size],
        "meaning": "images preprocessed as `preprocessing` says",
    }
    return [image], preprocessing


def _text_inputs(pre: dict) -> tuple[list[dict], dict]:
    preprocessing = {
        "tokenizer": pre.get("tokenizer", "tokenizer.json"),
        "tokenizer_location": (
            "not inside this file: tokenizer.json and tokenizer_config.json in the model package folder this file "
            "was exported into (transformers.AutoTokenizer.from_pretrained(folder) or tokenizers.Tokenizer.from_file)"
        ),
        "max_length": int(pre["max_length"]),
        "truncation": "texts longer than max_length tokens (special tokens included) are cut",
        "padding": "any length up to max_length; attention_mask is 1 on real tokens, 0 on padding",
        "special_tokens": "added as the tokenizer adds them by default",
    }
    inputs = [
        {"name": name, "dtype": "int64", "shape": ["batch", "sequence"], "meaning": meaning}
        for name, meaning in TEXT_INPUTS.items()
    ]
    return inputs, preprocessing


def as_strings(meta: dict) -> dict[str, str]:
    """ONNX metadata_props take strings only: lists and objects become JSON text."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def from_strings(props: dict[str, str]) -> dict:
    """ONNX metadata_props (from onnxruntime or onnx) back to :func:`describe`'s shape."""
    return {k: json.loads(v) if k in JSON_KEYS else v for k, v in props.items()}


def stamp_onnx(path: Path, meta: dict) -> None:
    """Write ``meta`` into an existing .onnx file's metadata_props (keeping any other keys)."""
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props} | as_strings(meta)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def read_onnx(path: str | Path) -> dict:
    """The metadata an .onnx file carries, parsed; a clear error when it carries none of ours."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = from_strings({p.key: p.value for p in model.metadata_props})
    if meta.get("format") != FORMAT:
        raise UserError(
            f"{path} carries no modelcycle metadata (metadata_props has no format {FORMAT!r}); it was not exported "
            "by this version of `modelcycle export`: pass its model package folder instead, or export it again"
        )
    return meta


def manifest_from(meta: dict, file: Path) -> dict:
    """A package manifest, as far as inference reads one, rebuilt from a file's metadata."""
    pre = meta["preprocessing"]
    if meta["inputs"][0]["name"] != "input":
        raise UserError(
            f"{file} is a {meta['task']} export whose tokenizer is not inside the file "
            f"({pre.get('tokenizer_location', 'see its metadata')}); pass the model package folder instead"
        )
    preprocessing = {k: pre[k] for k in ("image_size", "channels", "mean", "std", "resize_to", "keep_aspect")}
    return {
        "task": meta["task"],
        "backend": "onnx",
        "classes": meta["classes"],
        "preprocessing": preprocessing,
        "source_run": meta.get("source_run", ""),
        "_dir": str(file.parent),
        "_file": str(file),
    }
