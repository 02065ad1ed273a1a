"""What every run needs, whatever its loop: the epoch loop (``engine/trainer.py``) and custom
loops such as PPO's iterations (``tasks/ppo.py``) both run on one :class:`RunContext`.

It owns the run folder (checked before any work, locked and made only once data, model and
settings are checked, its ``config.yaml``), the tracking callbacks (``status.json``, MLflow),
``metrics.jsonl`` and ``events.log`` (written by rank 0 only), Ctrl-C/SIGTERM (finish the unit of
work, save, exit 130), checkpoints of whatever state a loop has (with every rank's random
streams; stale temporaries removed on restore), the non-finite guard and the warning that a
resume changed the settings. A loop supplies only its state and says what a step is.

A loop is what callbacks see (``engine/callbacks.Loop``): it has ``run_dir``, ``meta``,
``state.step``, ``event``, ``cfg`` and ``callbacks``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any

import torch

from modelcycle import runfiles, runs, track
from modelcycle.config import Config
from modelcycle.engine import checkpoint, distributed
from modelcycle.errors import NonFiniteLossError, UserError
from modelcycle.progress import warn
from modelcycle.runlogs import EventLog, MetricsLog, reconcile


class TrainingInterrupted(UserError):
    """Ctrl-C or SIGTERM: a checkpoint was saved and ``--resume`` continues."""

    exit_code = 130


class RunContext:
    background_checkpoints = True  # False: written before save() returns (benchmarks/bench_whole_process.py)

    def __init__(self, run_dir: Path | None, callbacks: list | tuple = (), keep_checkpoints: int = 1):
        self.run_dir = run_dir
        self.callbacks = list(callbacks)  # the user's, then tracking's; a loop adds its own in front
        self.keep_checkpoints = keep_checkpoints
        self.ckpt_dir = run_dir / "checkpoints" if run_dir else None  # read by every rank, written by rank 0
        writes = run_dir if run_dir and distributed.is_main() else None
        self.metrics_log = MetricsLog(writes / "metrics.jsonl") if writes else None
        self.event = EventLog(writes / "events.log" if writes else None)
        self.config: Config | None = None
        self.resume = self.overwrite = False
        self.tracking: list = []
        self.stop_signal: str | None = None
        self._stop_vote: distributed.StopVote | None = None
        self._bad_step: torch.Tensor | None = None
        self.writer = checkpoint.Writer(self.background_checkpoints)

    @classmethod
    def open(cls, config: Config, resume: bool = False, overwrite: bool = False, callbacks=None) -> RunContext:
        """Join torchrun's process group (if any), refuse to train over an earlier run by accident
        and set up tracking, so a bad tracking set-up fails here, before any work. Nothing is
        written yet: :meth:`folder` makes the folder."""
        distributed.init(config.train.device)
        run_dir = runs.check_run_dir(config, resume=resume or overwrite)
        tracking = track.callbacks(config, resume)  # status.json, MLflow
        ctx = cls(run_dir, [*(callbacks or []), *tracking], config.train.keep_checkpoints)
        ctx.config, ctx.resume, ctx.overwrite, ctx.tracking = config, resume, overwrite, tracking
        return ctx

    @contextlib.contextmanager
    def folder(self):
        """The run's life in its folder: rank 0 locks it (one process writes it; the other ranks
        write nothing), empties it for --overwrite, saves config.yaml; a full disk is an error
        naming the file; the lock goes however the run ends. Call it once data, model and
        settings are checked, so a mistake leaves no folder behind."""
        config, resume = self.config, self.resume
        assert config is not None and self.run_dir is not None, "RunContext.open() makes the context of a run folder"
        if resume and (changes := runs.config_changes(self.run_dir, config)):
            warn(
                "resuming with changed settings, so the result will differ from an uninterrupted run: "
                + "; ".join(changes)
            )
        with runs.run_folder(self.run_dir, config, self.overwrite and not resume, resume, writer=distributed.is_main()):
            distributed.barrier()  # the folder exists (and an --overwrite'n one is gone) before any rank goes on
            yield

    def finish(self, run: runs.Run) -> None:
        """After the model package is written: trackers see the finished run."""
        if distributed.is_main():
            track.finish(self.tracking, run)

    # ------------------------------------------------------------------ the fit

    @contextlib.contextmanager
    def fitting(self, loop: Any, started: str):
        """Around a loop's whole fit: "fit start" in events.log, the callbacks' ``on_fit_start`` and
        ``on_fit_end`` (which sees how it ended: status.json says finished, interrupted or failed),
        graceful signals, and a full disk met by a task or callback an error naming the file."""
        self.event(f"fit start {started}")
        for cb in loop.callbacks:
            cb.on_fit_start(loop)
        self._stop_vote = distributed.StopVote()
        try:
            with self.signals():
                yield
            self.flush()  # a checkpoint that could not be written fails the run here, at the latest
        except OSError as exc:
            if not runfiles.is_disk_error(exc):
                raise
            self._settle()  # the last.pt named below is whatever the pending write left
            # a write of the run's own files says so itself; this is any other file a task or callback writes
            where = exc.filename or (self.run_dir or "a file")
            kept = f"{self.last} is intact" if self.last and self.last.exists() else "no checkpoint had been written"
            raise runfiles.write_error(exc, where, "", f"run the same command with --resume ({kept})") from None
        finally:
            self._settle()
            self._stop_vote.close()
            for cb in loop.callbacks:
                cb.on_fit_end(loop)

    # ------------------------------------------------------------------ signals

    @contextlib.contextmanager
    def signals(self):
        """First Ctrl-C/SIGTERM: the loop finishes its unit of work, saves and stops. Second
        Ctrl-C: stop at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, _frame):
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signal.Signals(signum).name

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def stop_requested(self) -> bool:
        """Whether to stop now; with several processes every rank answers the same, one step after
        the first signal (see ``distributed.StopVote``). Call it once per unit of work."""
        vote = self._stop_vote
        local = self.stop_signal is not None
        return vote(local) if vote is not None else local

    def interrupted(self, where: str) -> TrainingInterrupted:
        """The error to raise once the loop has saved: ``where`` is e.g. ``step 12``."""
        self.stop_signal = self.stop_signal or "a signal to another process"
        self.flush()  # "checkpoint saved" below must be true
        self.event(f"stopped by {self.stop_signal} at {where}")
        return TrainingInterrupted(
            f"stopped by {self.stop_signal} at {where}; checkpoint saved to {self.last or 'nowhere (no run folder)'}. "
            "Run the same command with --resume to continue"
        )

    # ------------------------------------------------------------------ checkpoints

    @property
    def last(self) -> Path | None:
        return self.ckpt_dir / "last.pt" if self.ckpt_dir else None

    def save(self, state: dict, step: int, what: str, best: bool = False) -> None:
        """Every rank calls it (with the state it gathered); rank 0 writes ``last.pt``, a
        step-numbered hard link (``train.keep_checkpoints`` kept) and, if ``best``, ``best.pt``.
        The state is serialised before this returns; the fsync, renames and links finish in the
        background (``checkpoint.Writer``), and :meth:`flush` waits for them. The event is logged
        once the files are in place."""
        if self.ckpt_dir is None or not distributed.is_main():
            return
        folder, keep = self.ckpt_dir, self.keep_checkpoints
        last = folder / "last.pt"

        def finish(pending: checkpoint.PendingSave) -> None:
            checkpoint.finish_save(pending)
            checkpoint.atomic_link(last, folder / f"step-{step:09d}.pt")
            checkpoint.prune_numbered(folder, keep)
            if best:
                checkpoint.atomic_link(last, folder / "best.pt")
            self.event(f"checkpoint {what}{' (best)' if best else ''}")

        self.writer.submit(lambda: checkpoint.start_save(state, last), finish)

    def flush(self) -> None:
        """Wait until every checkpoint saved so far is on disk (a callback that reads the files
        calls this first); raises the error of one that could not be written."""
        self.writer.wait()

    def _settle(self) -> None:
        """Let a pending write finish when the fit ends on another error; its own error is logged."""
        if lost := self.writer.settle():
            self.event(f"checkpoint not written: {lost}")

    def load_last(self, map_location: Any = "cpu") -> dict | None:
        """``last.pt`` (temporaries of a process killed mid-write removed first), or None."""
        if self.ckpt_dir is None:
            return None
        if distributed.is_main():
            checkpoint.remove_stale_temporaries(self.ckpt_dir)
        path = self.ckpt_dir / "last.pt"
        if not distributed.agree(path.exists(), f"whether {path} exists"):
            return None
        return checkpoint.load(path, map_location)

    def resumed(self, ck: dict, seed: int, what: str, history: list[dict] | None = None, epochs: int = 0) -> None:
        """After a loop loaded its state from ``ck``: the random streams, metrics.jsonl cut back to
        the checkpoint (with ``history``, its epoch lines put back too) and the event."""
        note = distributed.restore_rng(ck, seed)
        if self.metrics_log:
            damaged = self.metrics_log.truncate_after(ck["state"]["step"])
            if damaged:
                self.event(f"metrics.jsonl: {damaged} damaged line(s) dropped")
            if history is not None and (mended := reconcile(self.metrics_log, history, epochs, self.last)):
                self.event(mended)
        self.event(f"resumed from {what}" + (f"; {note}" if note else ""))

    def fresh_start(self, resume: bool) -> None:
        if resume:
            self.event("--resume given but no checkpoint found; starting from the beginning")
        if self.metrics_log:  # lines from an earlier attempt that never checkpointed
            self.metrics_log.truncate_after(0)

    # ------------------------------------------------------------------ the non-finite guard

    def note_loss(self, loss: torch.Tensor, step: int) -> None:
        """Remember the first step whose loss is NaN or infinite, on the device: no host sync."""
        if self._bad_step is None:
            self._bad_step = torch.tensor(-1, device=loss.device)
        self._bad_step = torch.where((self._bad_step < 0) & ~torch.isfinite(loss.detach()).all(), step, self._bad_step)

    def check_finite(self, where: str, unit: str = "step") -> None:
        """Stop with :class:`NonFiniteLossError` (every rank together) if a noted loss was not
        finite; the last good checkpoint stays as it was."""
        bad = distributed.first_bad_step(self._bad_step if self._bad_step is not None else torch.tensor(-1))
        if bad < 0:
            return
        self.event(f"non-finite loss at {unit} {bad}")
        raise NonFiniteLossError(
            f"the loss became NaN or infinite at {unit} {bad}{f' ({where})' if where else ''}; training stopped "
            f"and {self.kept()}. Lower train.lr, set train.clip_grad, or check the data; then --resume or start again"
        )

    def kept(self) -> str:
        """What a stop for a non-finite value leaves behind, in words for its error message."""
        self._settle()  # a write still under way is a good checkpoint (saves check the loss first)
        last = self.last
        return (
            f"the last good checkpoint {last} is kept"
            if last and last.exists()
            else "no checkpoint had been written yet"
        )
