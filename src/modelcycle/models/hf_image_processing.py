"""A Hugging Face image processor's settings (``preprocessor_config.json``) as modelcycle's own
preprocessing record, so training, evaluate, predict, export and serve feed a downloaded image
classifier what its authors fed it, through our pipeline (data/transforms.py).

The processor is read with ``AutoImageProcessor`` (its class fills the keys a config leaves out;
without torchvision transformers falls back to the ``*Pil`` classes, which hold the same
settings) and mapped onto four things our pipeline does:

- **resize**: the shorter side to ``resize_to`` (``size.shortest_edge``), or both sides to it
  (``size.height``/``width``, which stretches, as ViT's processor does: ``keep_aspect`` false);
  ConvNeXt's ``crop_pct`` resizes the shorter side to ``shortest_edge / crop_pct`` below 384 px;
- **crop**: a centre crop of ``image_size`` (``crop_size`` when ``do_center_crop``, else the resize);
- **scale**: ``do_rescale``/``rescale_factor``, EfficientNet's ``rescale_offset`` and
  ``include_top`` and ``do_normalize``/``image_mean``/``image_std`` folded into one ``mean`` and
  ``std`` on the 0..1 scale, since every step is affine per channel;
- **channel order**: ``do_flip_channel_order`` (MobileViT reads BGR) is done by the model wrapper.

A setting the pipeline cannot reproduce (no resize, padding, a non-square input) is a UserError,
never approximated. The resampling filter is OpenCV's (area when shrinking, linear when
enlarging), not PIL's: pixel values differ slightly from transformers' own preprocessing.
"""

from __future__ import annotations

from pathlib import Path

from modelcycle.errors import UserError

FILE = "preprocessor_config.json"
CONVNEXT_FULL_WARP = 384  # ConvNeXt's processor warps to a square at and above this size, crops below


def load_processor(folder: Path):
    """The image processor of the model in ``folder`` (no code from the folder is run)."""
    from transformers import AutoImageProcessor

    from modelcycle.models.hf import quiet

    if not (folder / FILE).is_file():
        raise UserError(
            f"{folder} has no {FILE}: a Hugging Face image model needs its image processor's settings (image size, "
            f"mean, std) to be fed as it was trained; copy {FILE} from where the model came from into the folder"
        )
    try:
        with quiet():
            return AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{folder}/{FILE}: transformers could not read the image processor: {exc}") from None


def preprocessing(folder: Path, channels: int) -> dict:
    """The package's ``preprocessing`` record for the model in ``folder`` (``channels`` from its config)."""
    processor = load_processor(folder)
    where = f"{folder}/{FILE}"
    name = type(processor).__name__.removesuffix("Pil")
    if _flag(processor, "do_pad"):
        raise UserError(f"{where}: do_pad is true ({name}); padding images is not something modelcycle can reproduce")
    resize_to, keep_aspect, crop = _geometry(processor, name, where)
    mean, std = _scale(processor, channels, where)
    flip = _flag(processor, "do_flip_channel_order")
    return {
        "image_size": crop,
        "channels": channels,
        "mean": mean,
        "std": std,
        "resize_to": resize_to,
        "keep_aspect": keep_aspect,
        "resize": (
            f"shorter side to {resize_to}, centre crop {crop}"
            if keep_aspect
            else f"both sides to {resize_to} (stretched), centre crop {crop}"
        ),
        "input_range": "0..255 -> (x/255 - mean)/std",
        "channel_order": "BGR (the model flips the RGB input)" if flip else "RGB",
        "flip_channels": flip,
        "layout": "NCHW float32",
        "image_processor": name,
        "image_processor_file": FILE,
    }


def _flag(processor, key: str) -> bool:
    return bool(getattr(processor, key, False))


def _side(value, what: str, where: str) -> int:
    if value is None:
        raise UserError(f"{where}: {what} is not set")
    return int(value)


def _square(size, what: str, where: str) -> int:
    height, width = _side(size.height, f"{what}.height", where), _side(size.width, f"{what}.width", where)
    if height != width:
        raise UserError(
            f"{where}: {what} is {height}x{width}; modelcycle feeds square images (one image_size), so it cannot "
            "feed this model as it was trained"
        )
    return height


def _geometry(processor, name: str, where: str) -> tuple[int, bool, int]:
    """(resize_to, keep_aspect, crop side)."""
    if not _flag(processor, "do_resize"):
        raise UserError(
            f"{where}: do_resize is false ({name}): the model takes images at their own size, and modelcycle feeds "
            "batches of one size"
        )
    size = processor.size
    crop_pct = getattr(processor, "crop_pct", None)
    if size.longest_edge or size.max_height or size.max_pixels:
        raise UserError(f"{where}: size {size} bounds the longer side; only shortest_edge or height/width map")
    if size.shortest_edge:
        side = int(size.shortest_edge)
        if crop_pct is not None and not _flag(processor, "do_center_crop"):
            if not name.startswith("ConvNext"):
                raise UserError(f"{where}: crop_pct without do_center_crop ({name}) is not mapped (ConvNeXt's only)")
            if side >= CONVNEXT_FULL_WARP:
                return side, False, side
            return int(side / crop_pct), True, side  # int(), as transformers rounds
        if not _flag(processor, "do_center_crop"):
            raise UserError(
                f"{where}: shortest_edge without a centre crop ({name}) gives images of varying shape; "
                "modelcycle feeds square images of one size"
            )
        crop = _square(processor.crop_size, "crop_size", where)
        resize_to = side
    else:
        resize_to = _square(size, "size", where)
        crop = _square(processor.crop_size, "crop_size", where) if _flag(processor, "do_center_crop") else resize_to
        if crop > resize_to:
            raise UserError(f"{where}: crop_size {crop} is larger than size {resize_to}")
        return resize_to, False, crop
    if crop > resize_to:
        raise UserError(f"{where}: crop_size {crop} is larger than size.shortest_edge {resize_to}")
    return resize_to, True, crop


def _per_channel(value, channels: int, key: str, where: str) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, list | tuple) else [float(value)] * channels
    if len(values) != channels:
        raise UserError(f"{where}: {key} has {len(values)} values for a model of {channels} channels")
    return values


def _scale(processor, channels: int, where: str) -> tuple[list[float], list[float]]:
    """mean and std on the 0..1 scale such that ``(x/255 - mean)/std`` is what the processor computes:
    ``((x*r - offset - m)/s)/t`` with ``t = s`` under EfficientNet's include_top, else 1."""
    rescale = float(processor.rescale_factor) if _flag(processor, "do_rescale") else 1.0
    offset = 1.0 if _flag(processor, "do_rescale") and _flag(processor, "rescale_offset") else 0.0
    ones = [1.0] * channels
    if _flag(processor, "do_normalize"):
        m = _per_channel(processor.image_mean, channels, "image_mean", where)
        s = _per_channel(processor.image_std, channels, "image_std", where)
    else:
        m, s = [0.0] * channels, ones
    # EfficientNet divides by image_std once more, normalising or not
    again = _per_channel(processor.image_std, channels, "image_std", where) if _flag(processor, "include_top") else ones
    std = [si * ti / (255.0 * rescale) for si, ti in zip(s, again, strict=True)]
    mean = [(offset + mi) / (255.0 * rescale) for mi in m]
    return mean, std
