"""Model names -> builders, and users' own models given as ``path/to/file.py:build``.

A user's model file is Python: importing it runs it. A config the user wrote may name one (they
chose to run it), but a model package may come from anyone, so a package that names a file is
built only with an explicit opt-in (``--trust-code``, ``MODELCYCLE_TRUST_CODE=1`` or
``trust_code=True``), or when this process already ran that same file for the user's own config
(train, then evaluate its package).
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from modelcycle.errors import ConfigError, UserError
from modelcycle.models import vision

Builder = Callable[..., nn.Module]

REGISTRY: dict[str, Builder] = {
    "simple_cnn": vision.simple_cnn,
    "resnet18": vision.resnet18,
    "resnet34": vision.resnet34,
    "resnet50": vision.resnet50,
    "mobilenet_v2": vision.mobilenet_v2,
    "vit_tiny": vision.vit_tiny,
}


TRUST_ENV = "MODELCYCLE_TRUST_CODE"
_TRUSTED_FILES: set[Path] = set()  # user model files this process has run for the user's own config


def register(name: str) -> Callable[[Builder], Builder]:
    def wrap(fn: Builder) -> Builder:
        REGISTRY[name] = fn
        return fn

    return wrap


def names_code(name: str) -> bool:
    """True when ``name`` is a user's model file (``path/to/file.py:build``), not a registry name."""
    return name not in REGISTRY and ":" in name and name.split(":", 1)[0].endswith(".py")


def resolve_builder(name: str, package: str | None = None, trust_code: bool = False) -> Builder:
    """The builder called ``name``. ``package`` is the manifest that named it, when it came from a
    model package rather than the user's config: then a Python file runs only with ``trust_code``
    (or the environment's opt-in), see the module's docstring."""
    if name in REGISTRY:
        return REGISTRY[name]
    if names_code(name):
        path = Path(name.rsplit(":", 1)[0]).resolve()
        if package is None:
            _TRUSTED_FILES.add(path)
        elif not (trust_code or os.environ.get(TRUST_ENV) == "1" or path in _TRUSTED_FILES):
            raise UserError(
                f"{package} names Python code as its architecture ({name}); loading the package would run that "
                "file. If you trust where the package came from, pass --trust-code before the verb "
                f"(`modelcycle --trust-code predict ...`; Python: trust_code=True, or set {TRUST_ENV}=1); "
                "otherwise ask for a package of a built-in architecture"
            )
        return _load_user_builder(name)
    close = difflib.get_close_matches(name, REGISTRY, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(
        f"model.name: unknown model '{name}'; {hint}choose one of {', '.join(REGISTRY)} "
        "or give your own as path/to/file.py:build"
    )


def _load_user_builder(spec: str) -> Builder:
    file, func = spec.rsplit(":", 1)
    path = Path(file)
    if not path.is_file():
        raise ConfigError(f"model.name: file {path} not found (from '{spec}')")
    module_spec = importlib.util.spec_from_file_location(f"modelcycle_user_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    builder = getattr(module, func, None)
    if not callable(builder):
        raise ConfigError(f"model.name: {path} has no function '{func}'")
    return builder


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    image_size: int,
    args: dict[str, Any] | None = None,
    package: str | None = None,
    trust_code: bool = False,
) -> nn.Module:
    builder = resolve_builder(name, package, trust_code)
    args = dict(args or {})
    params = inspect.signature(builder).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in args if k not in params and not accepts_any]
    if unknown:
        raise ConfigError(
            f"model.args: {name} takes no argument {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(p for p in params if p not in ('in_channels', 'num_classes', 'image_size'))}"
        )
    try:
        model = builder(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {name}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {name} returned {type(model).__name__}, not a torch.nn.Module")
    return model
