"""How the model is spread over the training processes: replicated (one process, or DDP) or
sharded (FSDP2). Each strategy wraps the model for the training step, and turns its state into
(and back from) the single-process layout, so a checkpoint written under any strategy and any
process count resumes under any other, and single-process tools read it as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from modelcycle.config import TrainSection
from modelcycle.engine.distributed import active, check_settings, world_size


class Replicate:
    """One process, or DDP: every rank holds the whole model; gradients are averaged in backward."""

    def __init__(self, cfg: TrainSection, device: torch.device):
        self.cfg, self.device = cfg, device
        self.map_location: torch.device | str = device
        self.ddp: nn.parallel.DistributedDataParallel | None = None

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step runs; ``model`` itself stays unwrapped for state dicts."""
        if not active():
            return model
        if self.cfg.sync_bn:
            converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            assert converted is model, "a bare BatchNorm as the whole model"
        ids = [torch.cuda.current_device()] if self.device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return self.ddp

    def model_state(self, model: nn.Module) -> dict:
        return model.state_dict()

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        return optimizer.state_dict()

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, ck: dict) -> None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])

    @contextlib.contextmanager
    def grad_sync(self, enabled: bool) -> Iterator[None]:
        """No gradient all-reduce on accumulation micro-batches but the last of a step."""
        with self.ddp.no_sync() if self.ddp is not None and not enabled else contextlib.nullcontext():
            yield


class Shard(Replicate):
    """FSDP2 (``fully_shard``): each rank keeps 1/world of every parameter, gradient and optimizer
    state, and gathers a group's parameters only while that group computes. For models that do
    not fit one device. Checkpoints are gathered into full state dicts on rank 0, in the same
    layout a single process writes, so either strategy resumes the other's checkpoints."""

    GROUPS = 16  # a submodule becomes its own FSDP group once it holds 1/16 of the parameters

    def __init__(self, cfg: TrainSection, device: torch.device):
        super().__init__(cfg, device)
        self.map_location = "cpu"  # full tensors are sliced into shards on their way to the device
        self.model: nn.Module | None = None

    def wrap(self, model: nn.Module) -> nn.Module:
        """Shard big submodules first (post-order), then the rest with the root. Smaller groups
        lower the peak memory of a gathered group; fewer groups mean fewer, larger collectives."""
        from torch.distributed.fsdp import fully_shard

        if self.cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        threshold = sum(p.numel() for p in model.parameters()) / self.GROUPS

        def visit(module: nn.Module) -> int:
            loose = sum(p.numel() for p in module.parameters(recurse=False))
            loose += sum(visit(child) for child in module.children())
            if module is not model and loose >= threshold:
                fully_shard(module)
                return 0
            return loose

        visit(model)
        fully_shard(model)
        self.model = model
        return model

    def model_state(self, model: nn.Module) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_full_on_rank0())

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return _by_index(get_optimizer_state_dict(model, optimizer, options=_full_on_rank0()))

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, ck: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        full = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, ck["model"], options=full)
        set_optimizer_state_dict(model, optimizer, _by_name(ck["optimizer"], model, optimizer), options=full)

    @contextlib.contextmanager
    def grad_sync(self, enabled: bool) -> Iterator[None]:
        self.model.set_requires_gradient_sync(enabled)
        yield


def build(cfg: TrainSection, device: torch.device) -> Replicate:
    """How the model is spread over the processes: replicated (one process, or DDP) or sharded."""
    check_settings(cfg, world_size())
    return Shard(cfg, device) if active() and cfg.strategy == "fsdp" else Replicate(cfg, device)


def _full_on_rank0():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _by_index(state: dict) -> dict:
    """FSDP's optimizer state keyed by parameter name -> ``Optimizer.state_dict()``'s layout
    (parameters numbered in param-group order), which is what a single process writes."""
    if not state:  # ranks other than 0 get nothing back
        return {}
    index: dict[str, int] = {}
    groups = [{**g, "params": [index.setdefault(n, len(index)) for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def _by_name(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The reverse of :func:`_by_index`, numbering ``optimizer``'s parameters the same way."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {order[i]: v for i, v in state["state"].items()}, "param_groups": groups}
