"""``modelcycle train --nproc N``: N training processes on this machine, started by torchrun.

torchrun's launcher (``torch.distributed.run``) runs inside this process instead of as a
``python -m torch.distributed.run`` child: a torchrun child exits 1 with a Python traceback
whenever a worker fails, so the worker's own exit code (2 for a user error, 130 after Ctrl-C)
and its one-line message would drown. In this process a failure comes back as an exception that
carries each worker's exit code. What runs is exactly torchrun with these arguments::

    --nnodes 1 --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:0 \\
    --max-restarts 0 -m modelcycle train ARGS...

``--nnodes M --rdzv-endpoint HOST:PORT`` (the same command on each of M machines) passes those
two through instead, with ``--rdzv-id`` the run name, so that every node names the same job.

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


def check(config: Config, nproc: int, nnodes: int = 1, rdzv_endpoint: str | None = None) -> None:
    """Refuse, before any process starts, what the processes would refuse one by one."""
    if distributed.launched():
        raise UserError(
            "--nproc starts torchrun itself, and this command already runs under torchrun; leave --nproc out "
            "(torchrun's --nproc-per-node sets the process count)"
        )
    if nnodes < 1:
        raise UserError(f"--nnodes {nnodes}: give the number of machines that train together, at least 1")
    if nnodes > 1:
        _endpoint_host(rdzv_endpoint)
    elif rdzv_endpoint:
        raise UserError(
            "--rdzv-endpoint is where the machines of --nnodes 2 or more meet; with one machine leave it out"
        )
    distributed.check_settings(config.train, nproc * nnodes)  # every node runs the same --nproc


def _endpoint_host(endpoint: str | None) -> str:
    """The host of a multi-node rendezvous endpoint HOST:PORT (a fixed port: every node must know it)."""
    host, _, port = (endpoint or "").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(
            f"--nnodes needs --rdzv-endpoint HOST:PORT (got {endpoint!r}): the address of one of the machines, "
            "reachable from all of them, and a free port there, e.g. --rdzv-endpoint node1.example.org:29400"
        )
    return host.strip("[]")


def job_id(config: Config) -> str:
    """The rendezvous id: the same on every node, as each runs the same command."""
    return f"modelcycle-{config.run.name}"


def torchrun_args(
    nproc: int, argv: list[str], nnodes: int = 1, rdzv_endpoint: str | None = None, rdzv_id: str | None = None
) -> list[str]:
    return [
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        # by default a free port on the loopback interface: nothing leaves the machine
        f"--rdzv-endpoint={rdzv_endpoint or '127.0.0.1:0'}",
        f"--rdzv-id={rdzv_id or uuid.uuid4().hex}",
        "--max-restarts=0",
        f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}",
        "-m",
        "modelcycle",
        *argv,
    ]


def launch(
    argv: list[str], nproc: int, nnodes: int = 1, rdzv_endpoint: str | None = None, rdzv_id: str | None = None
) -> int:
    """Run ``python -m modelcycle ARGV`` as ``nproc`` processes (on this node of ``nnodes``); the
    exit code to exit with (0, a worker's own code, or 128 + the signal that stopped the run)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # gloo on the loopback interface only when every process is on this machine
    local = nnodes == 1 or _endpoint_host(rdzv_endpoint) in ("127.0.0.1", "localhost", "::1")
    with _worker_env(nproc, local), _quiet_launcher(), _restored_signal_handlers():
        try:
            run(parse_args(torchrun_args(nproc, argv, nnodes, rdzv_endpoint, rdzv_id)))
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
def _worker_env(nproc: int, local: bool = True) -> Iterator[None]:
    """The workers inherit this process's environment: while they start, it holds one thread per
    core per process (unless the user chose) and, when they all run on this machine, gloo on the
    loopback interface (across machines gloo takes the interface of the host name, or the user's
    GLOO_SOCKET_IFNAME)."""
    saved = dict(os.environ)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if local and Path("/sys/class/net/lo").exists():
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
