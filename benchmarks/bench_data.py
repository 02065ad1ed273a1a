"""Data pipeline: images/second of modelcycle's training loader against a plain Pillow loader.

The script writes a folder of photo-like 256x256 JPEGs (smooth colour fields + grain, quality 90,
in class folders), runs ``modelcycle.prepare`` on it, and times one full epoch of:

* modelcycle: ``make_loader(..., DataSection(image_size=224, cache=False), train=True)``: decode,
  albumentations RandomResizedCrop + HorizontalFlip + ColorJitter (brightness, contrast,
  saturation, hue; p=0.8), batch-wise normalisation in the collate;
* plain: a ``torch.utils.data.Dataset`` doing Pillow open/convert RGB, random resized crop
  (PIL crop + bilinear resize to 224, same scale and ratio ranges), random horizontal flip, a
  brightness jitter, ``np.asarray`` and per-image normalisation to float32 CHW, default collate.

Same batch size, worker count and item list; both loaders keep their workers between epochs.
Each loader gets a short warm-up, then rounds alternate; throughput is counted from the first
batch of an epoch to its end. Target: modelcycle >= 1.0x the plain loader.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

import common
from modelcycle import prepare  # resolved here: the first use imports torch
from modelcycle.config import DataSection
from modelcycle.data.datasets import default_workers, make_loader
from modelcycle.data.manifest import PreparedData
from modelcycle.data.transforms import IMAGENET_MEAN, IMAGENET_STD

TARGET = 1.0


class PlainDataset(Dataset):
    """What one writes by hand with Pillow and numpy (torchvision's RandomResizedCrop algorithm)."""

    def __init__(self, items, size: int, scale, ratio, brightness: float):
        self.items, self.size, self.scale, self.ratio, self.brightness = items, size, scale, ratio, brightness
        self.mean = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
        self.std = np.array(IMAGENET_STD, dtype=np.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.items)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * random.uniform(*self.scale)
            aspect = math.exp(random.uniform(*log_ratio))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left, top = random.randint(0, width - w), random.randint(0, height - h)
                return left, top, left + w, top + h
        side = min(width, height)  # fallback: centre crop
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    def decode(self, index: int) -> Image.Image:
        with Image.open(self.items[index][0]) as img:
            return img.convert("RGB")

    def augment(self, img: Image.Image) -> Image.Image:
        img = img.crop(self.crop_box(*img.size)).resize((self.size, self.size), Image.BILINEAR)
        return img.transpose(Image.FLIP_LEFT_RIGHT) if random.random() < 0.5 else img

    def to_tensor(self, img: Image.Image) -> torch.Tensor:
        """Brightness jitter, then 0..255 -> normalised float32 CHW."""
        factor = random.uniform(1 - self.brightness, 1 + self.brightness) / 255.0
        array = np.clip(np.asarray(img, dtype=np.float32) * factor, 0.0, 1.0).transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray((array - self.mean) / self.std))

    def __getitem__(self, index: int):
        return self.to_tensor(self.augment(self.decode(index))), self.items[index][1]


def warm_up(loader: DataLoader, batches: int) -> None:
    """Start the (persistent) workers and run a few batches through them."""
    for i, _ in enumerate(loader):
        if i + 1 >= batches:
            break


def epoch_rate(loader: DataLoader) -> float:
    """Images/second over one epoch, from the first batch (after worker start-up) to the end."""
    batches = iter(loader)
    next(batches)
    count, start = 0, time.perf_counter()
    for images, _ in batches:
        count += len(images)
    return count / (time.perf_counter() - start)


def stage_breakdown(mc_dataset, collate, plain: PlainDataset, count: int, batch_size: int, repeats: int = 3):
    """Milliseconds per image of each stage, in this process: the median of ``repeats`` passes over
    the first ``count`` items, collated in batches of ``batch_size`` as the loaders do, on one torch
    thread as in a loader worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _stages(mc_dataset, collate, plain, count, batch_size, repeats)
    finally:
        torch.set_num_threads(threads)


def _stages(mc_dataset, collate, plain: PlainDataset, count: int, batch_size: int, repeats: int) -> list[list]:
    indices = list(range(min(count, len(plain))))
    labels = [plain.items[i][1] for i in indices]

    def per_image(fn):
        out, times = None, []
        for _ in range(repeats):
            out, seconds = common.timed(fn)
            times.append(seconds)
        return out, 1000 * common.median(times) / len(indices)

    def batches(pairs):
        return [pairs[k : k + batch_size] for k in range(0, len(pairs), batch_size)]

    def mc_augment(index, array):
        mc_dataset.transform.set_random_seed(index)  # as ImageDataset does for every sample
        return mc_dataset.transform(image=array)["image"]

    arrays, mc_decode = per_image(lambda: [mc_dataset.decode(i) for i in indices])
    done, mc_aug = per_image(lambda: [mc_augment(i, a) for i, a in zip(indices, arrays, strict=True)])
    pairs = list(zip(done, labels, strict=True))
    _, mc_collate = per_image(lambda: [collate(b) for b in batches(pairs)])

    images, plain_decode = per_image(lambda: [plain.decode(i) for i in indices])
    done, plain_aug = per_image(lambda: [plain.augment(im) for im in images])
    pairs = list(zip(done, labels, strict=True))
    _, plain_collate = per_image(
        lambda: [default_collate([(plain.to_tensor(im), label) for im, label in b]) for b in batches(pairs)]
    )
    mc_total, plain_total = mc_decode + mc_aug + mc_collate, plain_decode + plain_aug + plain_collate
    return [
        ["decode (Pillow)", mc_decode, plain_decode, f"{plain_decode / mc_decode:.2f}x"],
        ["crop + flip (+ colour jitter for modelcycle)", mc_aug, plain_aug, f"{plain_aug / mc_aug:.2f}x"],
        [
            "to float, normalise, collate (+ brightness for plain)",
            mc_collate,
            plain_collate,
            f"{plain_collate / mc_collate:.2f}x",
        ],
        ["total", mc_total, plain_total, f"{plain_total / mc_total:.2f}x"],
    ]


def measure(items, data: PreparedData, args) -> tuple[dict[str, list[float]], list[list]]:
    """Rates of both loaders (alternating rounds) and the per-stage breakdown; the loaders' workers
    stop when this returns."""
    cfg = DataSection(image_size=args.image_size, cache=False)
    mc_loader = make_loader(
        items, data, cfg, channels=3, batch_size=args.batch_size, train=True, seed=0, workers=args.workers
    )
    plain_loader = DataLoader(
        PlainDataset(items, args.image_size, cfg.crop_scale, cfg.crop_ratio, cfg.color_jitter),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    # batches of the same shape and dtype come out of both: the comparison is like for like
    mc_batch, plain_batch = next(iter(mc_loader)), next(iter(plain_loader))
    for name, (x, _) in (("modelcycle", mc_batch), ("plain", plain_batch)):
        assert x.shape == (args.batch_size, 3, args.image_size, args.image_size) and x.dtype == torch.float32, (
            f"{name} batch is {tuple(x.shape)} {x.dtype}"
        )
    warm_up(mc_loader, args.warmup_batches)
    warm_up(plain_loader, args.warmup_batches)
    rates = common.alternate(
        {"modelcycle": lambda: epoch_rate(mc_loader), "plain": lambda: epoch_rate(plain_loader)}, args.rounds
    )
    stages = (
        stage_breakdown(mc_loader.dataset, mc_loader.collate_fn, plain_loader.dataset, args.breakdown, args.batch_size)
        if args.breakdown
        else []
    )
    return rates, stages


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "smoke run (~30 s): 320 images, one round")
    parser.add_argument("--images", type=int, default=2000, help="JPEG files to write")
    parser.add_argument("--source-size", type=int, default=256, help="side of the written JPEGs")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=224, help="training resolution")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="loader worker processes for both sides (default: modelcycle's default_workers())",
    )
    parser.add_argument("--rounds", type=int, default=2, help="timed epochs per loader (median taken)")
    parser.add_argument("--warmup-batches", type=int, default=2)
    parser.add_argument(
        "--breakdown", type=int, default=128, help="images for the per-stage breakdown in the main process (0: skip it)"
    )
    args = parser.parse_args()
    common.quick_default(args, "images", 320)
    common.quick_default(args, "rounds", 1)

    threads = common.set_threads(args.threads)
    common.console.print(common.environment_line(threads), style="dim")
    with common.temp_dir("data", args.workdir, args.keep) as tmp:
        paths, write_s = common.timed(
            lambda: common.write_image_folder(
                tmp / "images", args.images, args.source_size, args.classes, ".jpg", quality=90, photo=True
            )
        )
        common.console.print(
            f"wrote {len(paths)} JPEGs {args.source_size}x{args.source_size} "
            f"({common.folder_size_mb(paths):.1f} MB) in {write_s:.1f} s",
            style="dim",
        )
        prepare(tmp / "images", tmp / "data", val=0.0, seed=0)  # every image in train.txt
        data = PreparedData.open(tmp / "data")
        items = data.split("train")
        rates, stages = measure(items, data, args)

    mc, plain = common.median(rates["modelcycle"]), common.median(rates["plain"])
    r = common.ratio(mc, plain)
    common.print_table(
        f"Data pipeline: training loader throughput, {len(items)} JPEGs {args.source_size}px -> {args.image_size}px "
        "(images/s, median)",
        ["loader", "workers", "batch", "images/s", "min..max", "ratio"],
        [
            [
                "modelcycle make_loader (albumentations)",
                args.workers,
                args.batch_size,
                mc,
                common.spread(rates["modelcycle"]),
                f"{r:.2f}x",
            ],
            [
                "plain Pillow + numpy Dataset",
                args.workers,
                args.batch_size,
                plain,
                common.spread(rates["plain"]),
                "1.00x",
            ],
        ],
        note=(
            f"{args.rounds} alternating round(s) of one epoch per loader after {args.warmup_batches} warm-up "
            "batches; counted from each epoch's first batch. modelcycle jitters brightness, contrast, "
            "saturation and hue (p=0.8); the plain loader brightness only."
        ),
    )
    if stages:
        common.print_table(
            f"Where the time goes: ms per image, 1 process, 1 thread, {len(items[: args.breakdown])} images, "
            "median of 3",
            ["stage", "modelcycle ms", "plain ms", "modelcycle speed-up"],
            stages,
        )
    common.verdict(
        r >= TARGET,
        f"modelcycle's loader gives {r:.2f}x the plain Pillow loader's images/s "
        f"(target >= {TARGET:.1f}x) with {args.workers} worker(s)",
    )


if __name__ == "__main__":
    main()
