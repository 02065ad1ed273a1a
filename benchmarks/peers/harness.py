"""How one side of a peer comparison is run and measured: each side is a fresh process, so its
figures are the whole process's (interpreter start, imports, set-up, the work, the exit).

A training or generation side is a child ``python benchmarks/peers/<comparison>.py SIDE CASE ROOT
OUT`` that writes what it did to ``OUT`` as JSON (samples, the seconds of the work they took,
the quality figure); the parent takes wall time, CPU time and peak memory from ``os.wait4``. A
serving side is a server process the parent starts, loads and stops; its CPU time and peak memory
are read from /proc over the server and its worker processes before it is stopped.

Only the standard library here: a child imports this module before anything else, and the
parent's imports must not count against either side.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

SIDES = ("modelcycle", "peer")


def child_env(threads: int) -> dict[str, str]:
    """Both sides get the same thread count (torch reads OMP_NUM_THREADS when it starts)."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "TOKENIZERS_PARALLELISM": "false",  # the same for the Hugging Face tokenizers on both sides
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_DISABLED": "true",
        "DISABLE_MLFLOW_INTEGRATION": "TRUE",
    }


# ---------------------------------------------------------------- a training/generation side


def run_child(script: Path, side: str, case: str, root: Path, threads: int) -> dict:
    """One side as a fresh process; its JSON plus ``wall_s``, ``cpu_s`` and ``peak_mb``."""
    out = root / f"result-{side}-{case}-{time.monotonic_ns()}.json"
    log = out.with_suffix(".log")
    started = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, str(script), side, case, str(root), str(out)],
            env=child_env(threads),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    if process.returncode:
        raise SystemExit(f"{script.name} {side} {case} failed (exit {process.returncode}):\n{log.read_text()[-4000:]}")
    result = json.loads(out.read_text())
    # ru_maxrss is in KiB on Linux: the child's own peak, or a waited-for grandchild's if larger
    return {**result, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024}


def child_main(sides: dict) -> None:
    """The child's entry: ``sides[SIDE](case, root)`` -> a dict written to OUT."""
    side, case, root, out = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    result = sides[side](case, root)
    out.write_text(json.dumps(result))


# ---------------------------------------------------------------- a serving side


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on 127.0.0.1:``port``, ready when ``health`` answers 200."""

    def __init__(self, command: list[str], port: int, health: str, threads: int, log: Path, timeout: float = 300):
        self.url = f"http://127.0.0.1:{port}"
        self.started = time.perf_counter()
        self.log = log
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, env=child_env(threads), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise SystemExit(f"the server exited early:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + health, timeout=5) as response:
                    if response.status == 200:
                        self.ready_s = time.perf_counter() - self.started
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise SystemExit(f"the server did not get ready in {timeout:.0f} s:\n{log.read_text()[-4000:]}")

    def stop(self) -> dict:
        """Stop it (SIGTERM to its process group, as Ctrl-C would reach all of it); returns its
        whole life's ``wall_s``, and ``cpu_s`` and ``peak_mb`` summed over its processes."""
        usage = tree_usage(self.process.pid)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return {**usage, "wall_s": time.perf_counter() - self.started}


def tree_usage(pid: int) -> dict:
    """CPU seconds (user + system, with reaped children's) and peak resident memory (VmHWM),
    summed over ``pid`` and every live process below it."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, peak_kb = 0.0, 0
    for p in [pid, *_descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue  # gone meanwhile
        cpu += sum(int(f) for f in fields[11:15]) / ticks  # utime stime cutime cstime
        peak_kb += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return {"cpu_s": cpu, "peak_mb": peak_kb / 1024}


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# ---------------------------------------------------------------- the two sides of a training row


def modelcycle_training(metric: str):
    """The modelcycle side of a training row: ``modelcycle train CLI_ARGS --overwrite`` in this
    process, as a user runs it (``cli_args`` and ``samples`` from the case's settings); samples/s
    over the epochs' ``epoch_time_s`` (each epoch's training loop), quality the last epoch's ``metric``."""

    def side(case: str, root: Path) -> dict:
        from modelcycle import cli

        s = settings(root)
        run_dir = root / "runs" / f"modelcycle-{case}"
        sys.argv = ["modelcycle", "train", *s["cli_args"], f"run.dir={run_dir.parent}", f"run.name={run_dir.name}"]
        sys.argv.append("--overwrite")
        try:
            cli.main()
        except SystemExit as exc:
            if exc.code:
                raise
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        epochs = [m for m in lines if "epoch_time_s" in m]
        return {
            "samples": s["samples"],
            "seconds": sum(m["epoch_time_s"] for m in epochs),
            "quality": epochs[-1][metric],
        }

    return side


def settings(root: Path) -> dict:
    """What the parent decided for this case (sizes, epochs), read by both sides alike."""
    return json.loads((root / "settings.json").read_text())


def trainer_args(output_dir: Path, **kwargs) -> dict:
    """The Hugging Face Trainer's (and TRL's) arguments every peer row shares: evaluation and a
    checkpoint (one kept) per epoch, as the modelcycle side does, no reporting, CPU, seed 0."""
    per_epoch = {"eval_strategy": "epoch", "save_strategy": "epoch", "save_total_limit": 1, "logging_strategy": "epoch"}
    quiet = {"report_to": "none", "disable_tqdm": True}
    return {"output_dir": str(output_dir), **per_epoch, **quiet, "use_cpu": True, "seed": 0, **kwargs}


def trainer_side(trainer, output_dir: Path, metric: str, samples: int) -> dict:
    """Train with a Hugging Face Trainer (or TRL's), save the final model as a user would, and
    report as the modelcycle side does: samples/s over the training loop (epoch start to last
    step, evaluation left out), quality the last evaluation's ``metric``."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        seconds = 0.0

        def on_epoch_begin(self, args, state, control, **kwargs) -> None:
            self.start = self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs) -> None:
            self.last = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs) -> None:
            self.seconds += self.last - self.start

    clock = Clock()
    trainer.add_callback(clock)
    trainer.train()
    trainer.save_model(str(output_dir / "model"))
    last = [m for m in trainer.state.log_history if metric in m][-1]
    return {"samples": samples, "seconds": clock.seconds, "quality": last[metric]}
