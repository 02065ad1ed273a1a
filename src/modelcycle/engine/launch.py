"""``modelcycle train --nproc N``: N training processes on this machine, started by torchrun.

torchrun's launcher (``torch.distributed.run``) runs inside this process instead of as a
``python -m torch.distributed.run`` child: a torchrun child exits 1 with a Python traceback
whenever a worker fails, so the worker's own exit code (2 for a user error, 130 after Ctrl-C)
and its one-line message would drown. In this process a failure comes back as an exception that
carries each worker's exit code. What runs is exactly torchrun with these arguments::

    --nnodes 1 --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:0 \\
    --max-restarts 0 -m modelcycle train ARGS...

Ctrl-C or SIGTERM to this process reaches every worker once (torchrun forwards it to each
worker's process group; the workers run in sessions of their own, so a terminal's Ctrl-C does
not reach them twice): they finish the step, rank 0 saves ``last.pt``, and all exit 130.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from modelcycle.config import Config
from modelcycle.engine import distributed
from modelcycle.errors import UserError
from modelcycle.progress import console

# how long torchrun waits, after forwarding a signal, for the workers to save and exit before it
# kills them: its default (30 s) is short for writing the checkpoint of a large model
SHUTDOWN_TIMEOUT_S = 300
_FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")  # the signals torchrun's launcher catches


class ProcessesFailed(UserError):
    """The training processes stopped with an error; they printed it themselves."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def check(config: Config, nproc: int) -> None:
    """Refuse, before any process starts, what the processes would refuse one by one."""
    if distributed.launched():
        raise UserError(
            "--nproc starts torchrun itself, and this command already runs under torchrun; leave --nproc out "
            "(torchrun's --nproc-per-node sets the process count)"
        )
    distributed.check_settings(config.train, nproc)


def torchrun_args(nproc: int, argv: list[str]) -> list[str]:
    return [
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0",  # a free port on the loopback interface: nothing leaves the machine
        f"--rdzv-id={uuid.uuid4().hex}",
        "--max-restarts=0",
        f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}",
        "-m",
        "modelcycle",
        *argv,
    ]


def launch(argv: list[str], nproc: int) -> int:
    """Run ``python -m modelcycle ARGV`` as ``nproc`` processes; the exit code to exit with
    (0, a worker's own code, or 128 + the signal that stopped the run)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    with _worker_env(nproc), _quiet_launcher(), _restored_signal_handlers():
        try:
            run(parse_args(torchrun_args(nproc, argv)))
        except SignalException as exc:
            return 128 + int(exc.sigval)
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            code = failure.exitcode
            if code < 0:
                console.print(f"[bold red]error:[/] training process {rank} was killed by {signal.Signals(-code).name}")
                return 128 - code
            if code not in (2, 130):  # those print their own one-line message; others a traceback
                console.print(f"[bold red]error:[/] training process {rank} failed with exit code {code}")
            return code
    return 0


def train(config: Config, nproc: int, resume: bool, overwrite: bool) -> Path:
    """``modelcycle.train(config, nproc=N)``: the resolved config goes to the processes as a file."""
    check(config, nproc)
    with tempfile.TemporaryDirectory(prefix="modelcycle-launch-") as folder:
        path = Path(folder) / "config.yaml"
        config.save(path)
        flags = ["--resume"] * resume + ["--overwrite"] * overwrite
        code = launch(["train", str(path), *flags], nproc)
    run_dir = Path(config.run.dir) / config.run.name
    if code:
        what = "were stopped" if code >= 128 else "failed"
        raise ProcessesFailed(
            f"the {nproc} training processes {what} (exit code {code}); their message is above. "
            f"{run_dir} can be continued with resume=True",
            code,
        )
    return run_dir


@contextlib.contextmanager
def _worker_env(nproc: int) -> Iterator[None]:
    """The workers inherit this process's environment: while they start, it holds one thread per
    core per process (unless the user chose) and gloo on the loopback interface."""
    saved = dict(os.environ)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if Path("/sys/class/net/lo").exists():
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _quiet_launcher() -> Iterator[None]:
    """torchrun logs every step of its life at WARNING and the workers' failures at ERROR; the
    workers say what went wrong themselves."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


@contextlib.contextmanager
def _restored_signal_handlers() -> Iterator[None]:
    """torchrun's launcher installs its own handlers and leaves them: put ours back (the API
    may be called from a notebook that keeps running)."""
    saved = {}
    for name in _FORWARDED:
        with contextlib.suppress(ValueError, AttributeError):  # not the main thread, or no such signal
            sig = getattr(signal, name)
            saved[sig] = signal.getsignal(sig)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
