"""Which parameters train when fine-tuning: the freeze modes every task shares.

- ``none``: everything trains.
- ``backbone``: only the classification head trains (a linear probe on the pretrained features).
- ``all_but_last:N``: the head, the last N blocks of the model's trunk and whatever runs after
  the trunk (a final norm, a pooler) train; the stem/embeddings and earlier blocks are frozen.

The *trunk* is found, not declared: it is the ``nn.Sequential`` / ``nn.ModuleList`` with the
most parameter-holding children (MobileNetV2's ``features``, a Hugging Face encoder's
``encoder.layer``), or a run of numbered sibling stages taken together (a ResNet's ``layer1`` ..
``layer4``), so users' own models work too as long as their blocks sit in such containers.

BatchNorm layers whose parameters are all frozen also keep their running statistics: updating
the statistics of a frozen backbone on a small new dataset shifts its features under the head
and undoes much of what pretraining gave.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from modelcycle.config_sections import FreezeMode, parse_freeze  # parsed in the config layer; re-exported
from modelcycle.errors import ConfigError

HEAD_NAMES = ("head", "classifier", "score", "fc")  # ours, then the usual Hugging Face / torchvision names
_HOOKS = "_modelcycle_frozen_norm_hooks"


@dataclass
class FreezeReport:
    mode: str
    trainable: int  # parameters (elements) that train
    total: int
    frozen_modules: list[str] = field(default_factory=list)  # top-most frozen module names, for the log

    def line(self) -> str:
        share = self.trainable / max(self.total, 1)
        return f"freeze={self.mode}: {self.trainable:,} of {self.total:,} parameters train ({share:.1%})"


def head_name(model: nn.Module, names: tuple[str, ...] = HEAD_NAMES) -> str:
    """The qualified name of the classification head (the first of ``names`` the model has)."""
    modules = dict(model.named_modules())
    for name in names:
        if name in modules and any(True for _ in modules[name].parameters()):
            return name
    wrapped = getattr(model, "wrapped_head", None)  # a wrapper of a library's model names its head (hf_vision.py)
    if isinstance(wrapped, str):
        below = sorted((n for n in modules if n.endswith(f".{wrapped}")), key=len)  # the outermost (LoRA nests)
        if below:
            return below[0]
    raise ConfigError(
        f"cannot find the model's classification head: it has no module named {' / '.join(names)}. "
        "Name your final layer `head` to fine-tune it, or use model.freeze=none"
    )


def trunk(model: nn.Module) -> tuple[str, list[str]]:
    """The container of the model's repeated blocks and the names of its parameter-holding blocks."""
    best, best_blocks = "", []
    for name, blocks in _containers(model):
        if len(blocks) > len(best_blocks):
            best, best_blocks = name, blocks
    if len(best_blocks) < 2:
        raise ConfigError(
            "model.freeze=all_but_last:N needs a model whose blocks sit in one nn.Sequential or nn.ModuleList; "
            "this one has none, so use model.freeze=backbone or none"
        )
    return best, best_blocks


def _containers(model: nn.Module):
    """(name, parameter-holding blocks) of every container, and of every run of numbered sibling
    containers (``layer1``, ``layer2``, ...) as one, named ``layer1..layer4``."""
    for name, module in model.named_modules():
        if _is_container(module):
            yield name, _blocks(name, module)
        stages: dict[str, list[tuple[str, nn.Module]]] = {}
        for child, m in module.named_children():
            if _is_container(m) and (numbered := re.fullmatch(r"(\D+)\d+", child)):
                stages.setdefault(numbered[1], []).append((f"{name}.{child}" if name else child, m))
        for group in stages.values():
            if len(group) > 1:
                yield f"{group[0][0]}..{group[-1][0]}", [b for stage, m in group for b in _blocks(stage, m)]


def _is_container(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential | nn.ModuleList)


def _blocks(name: str, container: nn.Module) -> list[str]:
    return [f"{name}.{child}" if name else child for child, m in container.named_children() if _has_params(m)]


def apply_freeze(model: nn.Module, mode: FreezeMode | str, head: str | None = None) -> FreezeReport:
    """Set ``requires_grad`` for ``mode``; returns what trains. Idempotent: a new mode replaces the old."""
    mode = parse_freeze(mode) if isinstance(mode, str) else mode
    _release_norms(model)
    params = list(model.named_parameters())
    if mode.kind == "none":
        trainable = {name for name, _ in params}
    else:
        head = head or head_name(model)
        trainable = {name for name, _ in params if within(name, head)}
        if mode.kind == "all_but_last":
            _, blocks = trunk(model)
            if mode.last > len(blocks):
                raise ConfigError(
                    f"model.freeze=all_but_last:{mode.last}, but the model's trunk has only {len(blocks)} blocks"
                )
            kept = blocks[-mode.last :]
            last_trunk = max(i for i, (name, _) in enumerate(params) if any(within(name, b) for b in blocks))
            for i, (name, _) in enumerate(params):
                if i > last_trunk or any(within(name, b) for b in kept):
                    trainable.add(name)
    for name, p in params:
        p.requires_grad_(name in trainable)
    frozen = _frozen_roots(model)
    _hold_norms(model)
    total = sum(p.numel() for _, p in params)
    return FreezeReport(str(mode), sum(p.numel() for n, p in params if n in trainable), total, frozen)


def unfreeze(model: nn.Module) -> FreezeReport:
    """Everything trains again (``train.unfreeze_at_epoch``)."""
    return apply_freeze(model, FreezeMode("none"))


def within(name: str, prefix: str) -> bool:
    """Whether the dotted parameter/module ``name`` is ``prefix`` or lies inside it."""
    return name == prefix or name.startswith(prefix + ".")


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _fully_frozen(module: nn.Module) -> bool:
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def _frozen_roots(model: nn.Module) -> list[str]:
    roots: list[str] = []
    for name, module in model.named_modules():
        if name and _fully_frozen(module) and not any(within(name, r) for r in roots):
            roots.append(name)
    return roots


def _hold_norms(model: nn.Module) -> None:
    """Frozen BatchNorms run in eval mode even while the model trains (see the module docstring)."""
    hooks = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and _fully_frozen(module):
            hooks.append(module.register_forward_pre_hook(_to_eval))
    if hooks:
        setattr(model, _HOOKS, hooks)


def _release_norms(model: nn.Module) -> None:
    for hook in getattr(model, _HOOKS, []):
        hook.remove()
    if hasattr(model, _HOOKS):
        delattr(model, _HOOKS)


def _to_eval(module: nn.Module, _inputs) -> None:
    module.training = False
