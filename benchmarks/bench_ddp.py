"""Data-parallel training: 2 DDP processes against 1 process, same model, same global batch.

Each side is a real ``modelcycle train`` command on the bundled digits (configs/digits.yaml:
simple_cnn width 32, 16 px, global batch 64, loader in the main process over cached images):

* DDP: ``--nproc 2``, one torch thread per process (2 processes x 1 thread on 2 cores);
* one process with as many threads as the DDP side has processes (1 x 2);
* one process with one thread (1 x 1): DDP's scaling efficiency is its rate over twice this.

The baseline is the faster of the two single-process figures: on a busy machine two OpenMP
threads can collapse (threads waiting for each other while the OS runs someone else), and a
ratio against that would flatter DDP.

Throughput is training images per second from each epoch's ``epoch_time_s`` (the training loop
only: process start-up and validation are not counted), median over the epochs after the first
(warm-up), then over the rounds; rounds alternate the order of the sides. Target: DDP reaches at
least 0.9x the best 1-process rate on the same cores, i.e. the all-reduce and the second
process cost at most 10 %. On two cores DDP cannot be much faster than 2 threads; on more cores and GPUs its
point is that it scales past one device.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import common

TARGET = 0.9  # DDP (2 x 1 thread) / the faster single process (1 x 2 or 1 x 1 threads)
BATCH = 64


def train(root: Path, name: str, nproc: int, threads: int, epochs: int) -> dict:
    """One ``modelcycle train`` run in a fresh process; its throughput and final accuracy."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "PYTHONPATH": os.pathsep.join([str(common.REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "modelcycle",
        "train",
        str(common.REPO / "configs" / "digits.yaml"),
        f"data.root={root / 'data'}",
        f"run.dir={root / 'runs'}",
        f"run.name={name}",
        f"train.epochs={epochs}",
        f"train.batch_size={BATCH}",
        "train.device=cpu",
        "data.workers=0",
        "--overwrite",
        *(["--nproc", str(nproc)] if nproc > 1 else []),
    ]
    common.console.print(f"training {name}: {nproc} process(es) x {threads} thread(s), {epochs} epochs", style="dim")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed (exit {done.returncode}):\n{done.stderr}")
    from modelcycle.runs import Run

    epochs_seen = Run(root / "runs" / name).epoch_metrics()
    images = len((root / "data" / "train.txt").read_text().splitlines())
    images -= images % BATCH == 1  # the lone last image is left out
    times = [m["epoch_time_s"] for m in epochs_seen[1:]] or [epochs_seen[0]["epoch_time_s"]]
    return {"rate": images / common.median(times), "val_accuracy": epochs_seen[-1]["val_accuracy"]}


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "smoke run: 1 round of 2 epochs per side")
    parser.add_argument("--rounds", type=int, default=3, help="runs per side (median taken)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is warm-up")
    args = parser.parse_args()
    common.quick_default(args, "rounds", 1)
    common.quick_default(args, "epochs", 2)
    common.console.print(common.environment_line(), style="dim")

    sides = {"ddp 2x1": (2, 1), "single 1x2": (1, 2), "single 1x1": (1, 1)}
    with common.temp_dir("ddp", args.workdir, args.keep) as root:
        common.digits_data(root)
        results: dict[str, list[dict]] = {name: [] for name in sides}

        def measure(name: str):
            def once() -> float:
                nproc, threads = sides[name]
                out = train(root, name.replace(" ", "-"), nproc, threads, args.epochs)
                results[name].append(out)
                return out["rate"]

            return once

        rates = common.alternate({name: measure(name) for name in sides}, args.rounds)

    single_thread = common.median(rates["single 1x1"])
    baseline = max(common.median(rates["single 1x2"]), single_thread)
    rows = []
    for name, (nproc, threads) in sides.items():
        rate = common.median(rates[name])
        rows.append(
            [
                name,
                nproc,
                threads,
                rate,
                common.spread(rates[name]),
                f"{common.ratio(rate, baseline):.2f}x",
                common.median([r["val_accuracy"] for r in results[name]]),
            ]
        )
    common.print_table(
        f"Data-parallel training on digits 16 px, simple_cnn, global batch {BATCH} (training images/s, median)",
        ["setup", "processes", "threads each", "images/s", "min..max", "vs best single", "val_accuracy"],
        rows,
        note=(
            f"{args.rounds} round(s) of {args.epochs} epochs per side, sides alternating; rate from epoch_time_s of "
            "the epochs after the first (no start-up, no validation). DDP runs 1 torch thread per process, the "
            "single process 2 threads (and 1). Accuracies differ slightly: simple_cnn has BatchNorm (per-process "
            "statistics under DDP) and dropout (per-process streams)."
        ),
    )
    ddp = common.median(rates["ddp 2x1"])
    common.verdict(
        common.ratio(ddp, baseline) >= TARGET,
        f"2 DDP processes x 1 thread train at {common.ratio(ddp, baseline):.2f}x the faster single process "
        f"(target >= {TARGET}x); scaling efficiency over 1 process x 1 thread: "
        f"{common.ratio(ddp, 2 * single_thread):.0%}",
    )


if __name__ == "__main__":
    main()
