"""prepare: files/second of ``modelcycle.prepare`` scanning and verifying a folder of small images.

The script writes 20,000 small images (32x32 PNG by default) in 10 class folders and times
``modelcycle.prepare`` on them: scan the class folders, fully decode every file (truncation
check), write the stratified split and stats. For context, a plain single-threaded loop that
lists the same folders and calls ``Image.open(p).load()`` on every file is timed too, and the
ratio printed; the issue sets no target against it. The files were just written, so both read
from the page cache; rounds alternate.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

import common
from modelcycle import prepare  # resolved here: the first use imports torch


def plain_loop(root: Path) -> int:
    """Single thread: list the class folders, then Image.open(p).load() on every file."""
    count = 0
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for name in sorted(os.listdir(class_dir)):
            with Image.open(class_dir / name) as img:
                img.load()
            count += 1
    return count


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "smoke run (~30 s): 3,000 images, one round")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=32, help="side of the written images")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--format", choices=["png", "jpg"], default="png")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs per side (median taken)")
    args = parser.parse_args()
    common.quick_default(args, "images", 3000)
    common.quick_default(args, "rounds", 1)

    common.console.print(common.environment_line(), style="dim")
    with common.temp_dir("prepare", args.workdir, args.keep) as tmp:
        images = tmp / "images"
        paths, write_s = common.timed(
            lambda: common.write_image_folder(
                images, args.images, args.size, args.classes, "." + args.format, photo=False
            )
        )
        common.console.print(
            f"wrote {len(paths):,} {args.format.upper()} files {args.size}x{args.size} "
            f"({common.folder_size_mb(paths):.1f} MB) in {args.classes} class folders in {write_s:.1f} s",
            style="dim",
        )
        results = {}

        def run_prepare() -> float:
            result, seconds = common.timed(lambda: prepare(images, tmp / "data", val=0.2, seed=0))
            results["prepare"] = result
            return seconds

        def run_plain() -> float:
            count, seconds = common.timed(lambda: plain_loop(images))
            results["plain"] = count
            return seconds

        times = common.alternate({"prepare": run_prepare, "plain": run_plain}, args.rounds)

    verified = results["prepare"].stats["num_images"]
    rejected = len(results["prepare"].rejected)
    mc_rate = verified / common.median(times["prepare"])
    plain_rate = results["plain"] / common.median(times["plain"])
    ratio = common.ratio(mc_rate, plain_rate)
    common.print_table(
        f"prepare: scan + verify {len(paths):,} {args.size}x{args.size} {args.format.upper()} files (files/s, median)",
        ["method", "files", "seconds", "files/s", "ratio"],
        [
            [
                f"modelcycle.prepare ({os.cpu_count() or 1} processes)",
                verified,
                common.median(times["prepare"]),
                mc_rate,
                f"{ratio:.2f}x",
            ],
            [
                "plain loop: Image.open(p).load(), 1 thread",
                results["plain"],
                common.median(times["plain"]),
                plain_rate,
                "1.00x",
            ],
        ],
        note=(
            f"{args.rounds} alternating round(s); prepare also writes train/val manifests and stats.json. "
            f"{rejected} file(s) rejected."
        ),
    )
    common.verdict(
        verified == len(paths) and rejected == 0,
        f"modelcycle.prepare verified {verified:,} of {len(paths):,} files at {mc_rate:,.0f} files/s, "
        f"{ratio:.2f}x a single-threaded Pillow loop (context only: the issue sets no target)",
    )


if __name__ == "__main__":
    main()
