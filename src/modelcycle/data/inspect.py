"""``modelcycle inspect``: the class table and a picture of one augmented training batch, so a
user sees the data exactly as the model will."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from modelcycle.config import DataSection  # noqa: E402
from modelcycle.data.datasets import make_loader  # noqa: E402
from modelcycle.data.manifest import PreparedData  # noqa: E402


def class_table(data: PreparedData) -> list[dict]:
    counts = data.stats.get("counts", {})
    splits = [s for s in ("train", "val", "test") if s in counts]
    return [{"class": name, **{s: counts[s].get(name, 0) for s in splits}} for name in data.classes]


def batch_grid(data: PreparedData, cfg: DataSection, out: Path, count: int = 32, seed: int = 0) -> Path:
    channels = cfg.channels or data.channels
    items = data.split("train")
    loader = make_loader(
        items,
        data,
        cfg.model_copy(update={"cache": False}),
        channels,
        min(count, len(items)),
        train=True,
        seed=seed,
        workers=0,
    )
    images, labels = next(iter(loader))
    pixels = loader.collate_fn.denormalise(images)
    cols = min(8, len(pixels))
    rows = (len(pixels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, pixels, labels.tolist(), strict=False):
        ax.imshow(image[:, :, 0] if channels == 1 else image, cmap="gray" if channels == 1 else None)
        ax.set_title(data.classes[label], fontsize=8)
    fig.suptitle(f"one augmented training batch ({cfg.image_size}x{cfg.image_size})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
