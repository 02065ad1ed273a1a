"""Training on several processes with torch.distributed (DDP or FSDP2), started by torchrun.

What makes an N-process run equal to a 1-process run with the same settings (within float
rounding), and lets a run resume on a different number of processes:

* ``train.batch_size`` is the *global* batch. The sampler (``data/datasets.py``) gives every rank
  the same permutation and cuts each global batch into equal contiguous shards; augmentation
  seeds belong to the global position.
* A task's loss is a mean over its batch. The engine scales each rank's loss by
  ``world * shard / batch`` (1 except on a short last batch) and DDP/FSDP average gradients over
  the ranks, so every step uses the gradient of the mean over the global batch.
* Metric sums are all-reduced before anything is logged or compared, so ``metrics.jsonl``, the
  monitor, early stopping and ``best.pt`` see global figures that are the same on every rank.
* Only rank 0 writes files. Checkpoints hold full, unwrapped state dicts (no ``module.``
  prefix, FSDP shards gathered) plus the counters in global units, so evaluate, export and a
  resume on any number of processes read them unchanged.

What does not carry over: BatchNorm normalises each rank's shard unless ``train.sync_bn``
(SyncBatchNorm, CUDA only), and random layers such as dropout draw from per-rank streams. Both
change the numbers, not the correctness; see docs/distributed.md.
"""

from __future__ import annotations

import atexit
import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from modelcycle.config import TrainSection
from modelcycle.engine import checkpoint
from modelcycle.engine.task import Sums
from modelcycle.errors import CheckpointError, ConfigError, UserError

_owned = False  # whether this module started the process group (and so ends it)


# ---------------------------------------------------------------- process group


def launched() -> bool:
    """Started by torchrun (or anything that sets its environment)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    return torch.device(name)


def init(device: str = "auto") -> None:
    """Join the process group torchrun describes in the environment (a no-op outside torchrun,
    or when the caller has initialised it already): nccl on GPUs, one per local rank; gloo on CPU.
    Ranks other than 0 print nothing but errors from here on."""
    global _owned
    if dist.is_initialized() or not launched():
        return
    cuda = resolve_device(device).type == "cuda"
    local = local_rank()
    if cuda:
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"process {local} on this machine has no GPU of its own ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU (--nproc / --nproc-per-node)"
            )
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", device_id=torch.device("cuda", local) if cuda else None)
    _owned = True
    atexit.register(teardown)
    if rank() > 0:
        from modelcycle.progress import console, stdout

        console.quiet = stdout.quiet = True


def teardown() -> None:
    global _owned
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _owned = False


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def describe(cfg: TrainSection) -> str:
    """For events.log: how many processes and which strategy, or nothing for one process."""
    return f" processes={world_size()} strategy={cfg.strategy} backend={dist.get_backend()}" if active() else ""


def barrier() -> None:
    if active():
        dist.barrier()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


# ---------------------------------------------------------------- settings


def split_batch(batch_size: int, world: int) -> int:
    """``train.batch_size`` is the global batch; each of ``world`` processes loads an equal share."""
    if world < 1:
        raise UserError(f"--nproc {world}: start at least one process")
    if batch_size % world:
        up = -(-batch_size // world) * world
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch, split evenly over the processes, and {world} "
            f"processes cannot split it; use train.batch_size={up} (or another multiple of {world}) "
            f"or a process count that divides {batch_size}"
        )
    return batch_size // world


def check_settings(cfg: TrainSection, world: int) -> None:
    """Settings that cannot work on ``world`` processes, refused before any process starts."""
    split_batch(cfg.batch_size, world)
    if world == 1:
        return
    if cfg.sync_bn and resolve_device(cfg.device).type != "cuda":
        raise ConfigError(
            "train.sync_bn=true needs CUDA (torch's SyncBatchNorm does not run on CPU); on CPU leave it off "
            "(each process then normalises its own share of the batch) or use a model without BatchNorm"
        )
    if cfg.unfreeze_at_epoch:
        raise ConfigError(
            "train.unfreeze_at_epoch does not work on several processes yet: DDP registers the parameters that "
            "train when it wraps the model, so layers unfrozen later would train apart on each process. Train the "
            "frozen phase and the unfrozen phase as two runs (the second with model.init_from=the first)"
        )
    if cfg.strategy == "fsdp":
        for key, on in (("ema", cfg.ema), ("l1", cfg.l1 > 0)):
            if on:
                raise ConfigError(
                    f"train.{key} is not supported with train.strategy=fsdp (it needs every full parameter on "
                    "each process); use train.strategy=ddp or turn it off"
                )


# ---------------------------------------------------------------- collectives


def reduce_sums(sums: Sums) -> dict[str, Any]:
    """Sums over all ranks, as host floats (the engine's only sync point, at log intervals); a
    sum of more than one number (a confusion matrix's counts) comes back as a nested list.

    In float64 so that counts stay exact integers. Every rank must pass the same keys: a task
    returns the same sums for every batch, and stand-in batches add zeros, not nothing."""
    if not active():
        return {k: float(v) if v.numel() == 1 else v.double().tolist() for k, v in sums.items()}
    keys = sorted(sums)
    if not keys:
        return {}
    device = _comm_device()
    buffer = torch.cat([sums[k].detach().to(device=device, dtype=torch.float64).reshape(-1) for k in keys])
    dist.all_reduce(buffer)
    host, out, start = buffer.cpu(), {}, 0  # one copy to the host
    for key in keys:
        shape = sums[key].shape
        part = host[start : start + sums[key].numel()]
        out[key] = part.item() if part.numel() == 1 else part.reshape(shape).tolist()
        start += part.numel()
    return out


def first_bad_step(bad: torch.Tensor) -> int:
    """The earliest step any rank saw a non-finite loss at, or -1: every rank stops together."""
    if not active():
        return int(bad)
    never = 1 << 62
    value = torch.where(bad < 0, never, bad).to(_comm_device(), torch.int64).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    step = int(value)
    return -1 if step == never else step


def agree(flag: bool, what: str) -> bool:
    """``flag`` if every rank has the same; an error naming ``what`` if not (a run folder that
    not every node sees)."""
    if not active():
        return flag
    votes = torch.tensor([int(flag), -int(flag)], device=_comm_device())
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    if votes[0] != -votes[1]:
        raise CheckpointError(
            f"the processes disagree on {what}: the run folder must be on a filesystem that every machine "
            "shares (the same path on each), see docs/distributed.md"
        )
    return flag


class StopVote:
    """Agree on Ctrl-C/SIGTERM: a signal may reach one rank only, but all must stop at the same
    step or the others wait forever in the next all-reduce. Each step starts an asynchronous
    all-reduce of this rank's flag on a CPU (gloo) group and reads the previous step's result, so
    the vote costs no host sync and every rank stops one step after the first signal."""

    def __init__(self):
        self.group = dist.new_group(backend="gloo") if active() else None
        self.pending: tuple[torch.Tensor, dist.Work] | None = None

    def __call__(self, local: bool) -> bool:
        if self.group is None:
            return local
        stop = False
        if self.pending is not None:
            flag, work = self.pending
            work.wait()
            stop = bool(flag)
        self.pending = None
        if not stop:  # every rank reaches the same verdict, so none starts a vote the others skip
            flag = torch.tensor(int(local))
            self.pending = (flag, dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True))
        return stop

    def close(self) -> None:
        if self.pending is not None:
            self.pending[1].wait()
            self.pending = None


# ---------------------------------------------------------------- random streams


def rng_states() -> dict:
    """This process's random streams, and with several processes every rank's (gathered on all)."""
    if not active():
        return {"rng": checkpoint.rng_state()}
    states: list = [None] * world_size()
    dist.all_gather_object(states, checkpoint.rng_state())
    return {"rng": states[rank()], "rng_ranks": states}


def restore_rng(ck: dict, seed: int) -> str | None:
    """Restore this rank's streams if the checkpoint was written by as many processes; otherwise
    (per-rank streams do not map across world sizes) reseed from (seed, step, rank), which data
    order and augmentation do not depend on. Returns a note for events.log in that case."""
    saved = ck.get("rng_ranks") or [ck["rng"]]
    if len(saved) == world_size():
        checkpoint.set_rng_state(saved[rank()])
        return None
    step = ck["state"]["step"]
    entropy = np.random.SeedSequence([seed, step, rank()]).generate_state(2)
    torch.manual_seed(int(entropy[0]))
    np.random.seed(int(entropy[1]))
    random.seed(int(entropy[0]))
    return (
        f"checkpoint written by {len(saved)} process(es), resumed on {world_size()}: random streams "
        f"(dropout) reseeded from seed, step and rank"
    )
