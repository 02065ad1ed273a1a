"""prepare: files/second of ``modelcycle.prepare`` scanning, verifying and hashing a folder of small images.

The script writes 20,000 small images (32x32 PNG by default) in 10 class folders, a few of them
twice (``--copies``: half hard links, half byte copies under another name), and times
``modelcycle.prepare`` on them: scan the class folders, fully decode every file (truncation
check), hash its bytes in the same read (duplicates), write the stratified split, stats and
duplicates.json. Beside it, in the same process: prepare with the hashing switched off (the
probe of before duplicates were looked for, though hard links are still decoded once; the ratio
is the hashing cost), prepare with ``near_duplicates=True`` (the dHash of each picture and the
grouping by it), and, for context, a plain single-threaded loop that lists the same
folders and calls ``Image.open(p).load()`` on every file. The files were just written, so all
read from the page cache; rounds alternate.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from PIL import Image

import common
import modelcycle.data.prepare as prepare_module
from modelcycle import prepare  # resolved here: the first use imports torch
from modelcycle.data.duplicates import ImageFacts, probe_file
from modelcycle.data.images import probe_image


def plain_loop(root: Path) -> int:
    """Single thread: list the class folders, then Image.open(p).load() on every file."""
    count = 0
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for name in sorted(os.listdir(class_dir)):
            with Image.open(class_dir / name) as img:
                img.load()
            count += 1
    return count


def probe_without_hash(path: Path, near: bool) -> ImageFacts:
    """The probe as it was before duplicates were looked for: decode only. The path stands in for
    the digest, so no two files group."""
    return ImageFacts(*probe_image(path), sha256=str(path))


def per_file_cost(paths: list[Path], rounds: int) -> dict[str, tuple[str, float]]:
    """Microseconds per file of the probe without and with the hash, in this process, alternating,
    the fastest round of each: on a busy machine the pool's figures above move by +-20 %."""
    probes = {
        "decode only": ("probe_image(path): decode only, as before", lambda p: probe_image(p)),
        "sha256": ("probe_file(path): one read, sha256, decode from memory", lambda p: probe_file(p)),
        "dhash": ("probe_file(path, near=True): + dHash", lambda p: probe_file(p, near=True)),
    }
    best = {name: float("inf") for name in probes}
    for _ in range(rounds):
        for name, (_, probe) in probes.items():
            _, seconds = common.timed(lambda probe=probe: [probe(p) for p in paths])
            best[name] = min(best[name], seconds / len(paths) * 1e6)
    return {name: (label, best[name]) for name, (label, _) in probes.items()}


def add_copies(paths: list[Path], fraction: float) -> int:
    """Every 1/fraction-th file gets a second name in its folder: a hard link or a byte copy, in turn."""
    step = max(1, round(1 / fraction)) if fraction > 0 else 0
    chosen = paths[::step] if step else []
    for n, path in enumerate(chosen):
        twin = path.with_name(f"{path.stem}-copy{path.suffix}")
        if n % 2 == 0:
            os.link(path, twin)
        else:
            shutil.copyfile(path, twin)
    return len(chosen)


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "smoke run (~30 s): 3,000 images, one round")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=32, help="side of the written images")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--format", choices=["png", "jpg"], default="png")
    parser.add_argument("--copies", type=float, default=0.02, help="fraction of files given a second name")
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
        copies = add_copies(paths, args.copies)
        common.console.print(
            f"wrote {len(paths):,} {args.format.upper()} files {args.size}x{args.size} "
            f"({common.folder_size_mb(paths):.1f} MB) in {args.classes} class folders in {write_s:.1f} s, "
            f"and a second name for {copies:,} of them",
            style="dim",
        )
        results = {}

        def timed_prepare(side: str, **options) -> float:
            result, seconds = common.timed(lambda: prepare(images, tmp / side, val=0.2, seed=0, **options))
            results[side] = result
            return seconds

        def unhashed() -> float:
            real = prepare_module.probe_file
            prepare_module.probe_file = probe_without_hash  # the worker processes fork with it
            try:
                return timed_prepare("unhashed")
            finally:
                prepare_module.probe_file = real

        def run_plain() -> float:
            count, seconds = common.timed(lambda: plain_loop(images))
            results["plain"] = count
            return seconds

        per_file = per_file_cost(paths[:2000], max(3, args.rounds))
        times = common.alternate(
            {
                "prepare": lambda: timed_prepare("prepare"),
                "unhashed": unhashed,
                "near": lambda: timed_prepare("near", near_duplicates=True),
                "plain": run_plain,
            },
            args.rounds,
        )

    names = len(paths) + copies
    rates = {side: names / common.median(times[side]) for side in ("prepare", "unhashed", "near")}
    rates["plain"] = results["plain"] / common.median(times["plain"])
    found = results["prepare"].stats["duplicates"]
    rows = [
        ("modelcycle.prepare: verify + sha256", "prepare"),
        ("prepare, hashing switched off (verify only)", "unhashed"),
        ("prepare --near-duplicates: + dHash, grouped", "near"),
        ("plain loop: Image.open(p).load(), 1 thread", "plain"),
    ]
    common.print_table(
        f"prepare: scan + verify {names:,} {args.size}x{args.size} {args.format.upper()} files "
        f"({os.cpu_count() or 1} processes; files/s, median)",
        ["method", "files", "seconds", "files/s", "vs verify only"],
        [
            [
                label,
                results[side] if side == "plain" else results[side].stats["num_images"],
                common.median(times[side]),
                rates[side],
                f"{common.ratio(rates[side], rates['unhashed']):.2f}x",
            ]
            for label, side in rows
        ],
        note=(
            f"{args.rounds} alternating round(s); prepare also writes the manifests, stats.json and duplicates.json. "
            f"Found {found['groups']:,} duplicate groups ({found['links']:,} hard links); "
            f"{len(results['prepare'].rejected)} file(s) rejected."
        ),
    )
    common.print_table(
        f"the probe of one file, one process, {len(paths[:2000]):,} files (microseconds per file, fastest round)",
        ["probe", "us/file", "vs decode only"],
        [
            [label, value, f"{common.ratio(value, per_file['decode only'][1]):.2f}x"]
            for label, value in per_file.values()
        ],
        note="The hash rides on the read the decode needs: Pillow decodes the bytes already in memory.",
    )
    hashing_cost = common.ratio(rates["unhashed"], rates["prepare"]) - 1
    common.verdict(
        results["prepare"].stats["num_images"] == names and found["groups"] == copies,
        f"modelcycle.prepare verified and hashed {names:,} files at {rates['prepare']:,.0f} files/s and found the "
        f"{copies:,} planted duplicates; hashing costs {hashing_cost:+.0%} against verifying alone",
    )


if __name__ == "__main__":
    main()
