"""Where the wall time of a whole `modelcycle train` process goes, before and after issue 18.

Each run is a fresh process (``python bench_whole_process.py --child ...``) that goes through the
real CLI (``modelcycle.cli.main``), so start-up (the interpreter, imports, data set-up, model and
optimizer) counts as a user pays it. A timing callback (added the way a tracker is) splits the
process into:

* start-up: process start -> imports done -> the first epoch starts (data, model, optimizer)
* training loop: the epochs' steps; validation: the validation passes
* checkpoints: what training waited for (serialising the state; with the old behaviour, the whole write),
  and what the writes took wherever they ran (``checkpoint.Writer``)
* reference profile (monitor/profile.py), the package (model.safetensors + modelcycle.json)
* other: everything else (loader workers, the end of the process)

"before" is the behaviour of modelcycle 0.1.0, switched on in the child: checkpoints written
before training goes on (``RunContext.background_checkpoints = False``), the profile made by a
pass of its own (no ``ValidationRecorder``), torch's default for-loop optimizer step and weight
decay on every parameter (``train.decay_norm_and_bias=true``). "after" is today's default.
Before and after alternate (A B, B A ...), medians are shown.

The checkpoint table writes the last checkpoint of the run again, with fsync (``atomic_save``)
and without (a plain ``torch.save``): what durability costs, whoever waits for it.

Cases: the digits recipe (configs/digits.yaml, 2 epochs) and resnet18 at 64 px (configs/
flowers.yaml) on 300 generated JPEGs, 2 epochs. Target: the profile <= 2 % of the process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

if sys.argv[1:2] != ["--child"]:  # a child is timed as `modelcycle train`: none of the parent's imports
    import common

PHASES = [
    ("imports", "imports"),
    ("set-up", "set-up (data, model, optimizer)"),
    ("loop", "training loop"),
    ("validation", "validation"),
    ("ckpt_waited", "checkpoints: training waited"),
    ("ckpt_written", "checkpoints: writes took"),
    ("profile", "reference profile"),
    ("package", "package"),
    ("other", "other (workers, exit)"),
    ("wall", "whole process"),
]
PROFILE_TARGET = 0.02


# ---------------------------------------------------------------- the child process


def child(spawned: float, mode: str, out: Path, run_dir: Path, cli_args: list[str]) -> None:
    """One `modelcycle train`, timed; writes its phases as JSON to ``out``."""
    from modelcycle import cli  # what `modelcycle train` imports first
    from modelcycle.tasks import images  # noqa: F401 - and on its way to the first step: torch, the loaders
    from modelcycle.training import service

    imported = time.time()
    from modelcycle import track
    from modelcycle.engine import checkpoint, optim
    from modelcycle.engine.callbacks import Callback
    from modelcycle.engine.run_context import RunContext
    from modelcycle.monitor import profile

    if mode == "before":
        RunContext.background_checkpoints = False
        optim._fusable = lambda model: False  # torch's default: the for-loop on CPU
        service._profile_recorder = lambda config, parts: None
        cli_args = [*cli_args, "train.decay_norm_and_bias=true"]
    times: dict[str, float] = {"imports": imported - spawned, "loop": 0.0, "validation": 0.0, "profile": 0.0}

    class Phases(Callback):
        def on_epoch_start(self, trainer) -> None:
            times.setdefault("first_epoch", time.time())
            self.epoch_start = time.time()

        def on_validation_start(self, trainer, model) -> None:
            times["loop"] += time.time() - self.epoch_start
            self.val_start = time.time()

        def on_validation_end(self, trainer) -> None:
            times["validation"] += time.time() - self.val_start

        def on_fit_end(self, trainer) -> None:
            times["ckpt_waited"] = trainer.ctx.writer.waited_s
            times["ckpt_written"] = trainer.ctx.writer.written_s
            times["fit_end"] = time.time()

    plain_callbacks, plain_profile, plain_package = (
        track.callbacks,
        profile.profile_after_training,
        service.write_run_package,
    )

    def timed_profile(*args, **kwargs):
        start = time.time()
        plain_profile(*args, **kwargs)
        times["profile"] += time.time() - start

    def timed_package(*args, **kwargs):
        start = time.time()
        plain_package(*args, **kwargs)
        times["package"] = time.time() - start - times["profile"]

    track.callbacks = lambda config, resume: [*plain_callbacks(config, resume), Phases()]
    profile.profile_after_training = timed_profile
    service.write_run_package = timed_package
    sys.argv = ["modelcycle", "train", *cli_args, "--overwrite"]
    try:
        cli.main()
    except SystemExit as exc:
        if exc.code:
            raise
    times["set-up"] = times.pop("first_epoch") - imported
    times["ended"] = time.time()
    times["extra_s"] = 0.0  # what this child does after the run, which the parent takes off its wall time
    if mode == "after":  # the last checkpoint written again: with fsync, and without
        last = run_dir / "checkpoints" / "last.pt"
        state = checkpoint.load(last)
        times["ckpt_mb"] = last.stat().st_size / 2**20
        times["fsync_s"] = min(_timed_save(lambda p: checkpoint.atomic_save(state, p), last) for _ in range(2))
        times["plain_s"] = min(_timed_save(lambda p: _plain_save(state, p), last) for _ in range(2))
        times["extra_s"] = time.time() - times["ended"]
    out.write_text(json.dumps(times))


def _plain_save(state: dict, path: Path) -> None:
    import torch

    with open(path, "wb") as handle:
        torch.save(state, handle)


def _timed_save(save, last: Path) -> float:
    path = last.with_name("bench-copy.pt")
    start = time.perf_counter()
    save(path)
    seconds = time.perf_counter() - start
    path.unlink()
    return seconds


# ---------------------------------------------------------------- the parent


def run_once(mode: str, cli_args: list[str], run_dir: Path, scratch: Path, threads: int) -> dict:
    out = scratch / f"{mode}-{time.monotonic_ns()}.json"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": str(threads)}
    spawned = time.time()
    result = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(spawned), str(out), str(run_dir), "--", *cli_args],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise SystemExit(f"the {mode} run failed:\n{result.stderr[-4000:]}")
    times = json.loads(out.read_text())
    times["wall"] = time.time() - spawned - times["extra_s"]
    accounted = sum(times[k] for k in ("imports", "set-up", "loop", "validation", "profile", "package"))
    times["other"] = times["wall"] - accounted - times["ckpt_waited"]
    return times


def case_args(name: str, root: Path) -> list[str]:
    runs = [f"run.dir={root / 'runs'}", f"run.name={name}"]
    if name == "digits":
        data = common.digits_data(root) if not (root / "data").is_dir() else root / "data"
        return [str(common.REPO / "configs" / "digits.yaml"), f"data.root={data}", "train.epochs=2", *runs]
    images = root / "jpegs"
    if not images.is_dir():
        from modelcycle import prepare

        common.write_image_folder(images / "raw", 300, 96, 4)
        prepare(images / "raw", images / "data", val=0.2, seed=0)
    return [
        str(common.REPO / "configs" / "flowers.yaml"),
        f"data.root={images / 'data'}",
        "data.image_size=64",
        "train.epochs=2",
        *runs,
    ]


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "one round, digits only")
    parser.add_argument("--rounds", type=int, default=2, help="before/after pairs per case")
    parser.add_argument("--cases", default="digits,resnet18", help="comma-separated: digits, resnet18")
    args = parser.parse_args()
    common.quick_default(args, "rounds", 1)
    common.quick_default(args, "cases", "digits")
    load = os.getloadavg()[0]
    common.console.print(common.environment_line(args.threads))
    with common.temp_dir("whole", args.workdir, args.keep) as root:
        for case in args.cases.split(","):
            cli_args = case_args(case, root / case)
            scratch = root / case / "times"
            scratch.mkdir(parents=True, exist_ok=True)
            run_dir = root / case / "runs" / case

            def measure(mode: str, cli_args=cli_args, scratch=scratch, run_dir=run_dir):
                return lambda: run_once(mode, cli_args, run_dir, scratch, args.threads)

            results = common.alternate({"before": measure("before"), "after": measure("after")}, args.rounds)
            report(case, results)
    common.warn_if_busy(load, "the phases' seconds are noisy; the ratios less so")


def report(case: str, results: dict[str, list[dict]]) -> None:
    def med(mode: str, key: str) -> float:
        return common.median([r[key] for r in results[mode]])

    rows = []
    for key, label in PHASES:
        before, after = med("before", key), med("after", key)
        share = after / med("after", "wall")
        rows.append([label, before, after, common.ratio(before, after) if after > 0.01 else float("nan"), share * 100])
    rounds = len(results["after"])
    common.print_table(
        f"{case}: whole `modelcycle train` process, seconds (median of {rounds} round(s))",
        ["phase", "before (0.1.0)", "after", "before/after", "after, % of process"],
        rows,
        note="before: checkpoints written in the foreground, profile by a pass of its own, for-loop optimizer, "
        "decay on every parameter",
    )
    after = results["after"]
    common.print_table(
        f"{case}: the last checkpoint written again",
        ["size MB", "atomic_save (fsync + rename) s", "plain torch.save s", "fsync's extra s"],
        [
            [
                common.median([r["ckpt_mb"] for r in after]),
                common.median([r["fsync_s"] for r in after]),
                common.median([r["plain_s"] for r in after]),
                common.median([r["fsync_s"] - r["plain_s"] for r in after]),
            ]
        ],
    )
    share = med("after", "profile") / med("after", "wall")
    common.verdict(
        share <= PROFILE_TARGET, f"{case}: the reference profile is {share:.1%} of the process (target <= 2 %)"
    )
    speed = med("before", "wall") / med("after", "wall")
    common.verdict(speed >= 1.0, f"{case}: the whole process is {speed:.2f}x as fast as before")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        split = sys.argv.index("--")
        child(float(sys.argv[3]), sys.argv[2], Path(sys.argv[4]), Path(sys.argv[5]), sys.argv[split + 1 :])
    else:
        main()
