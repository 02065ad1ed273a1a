"""What the command-line modules share: option help texts and the config-or-override argument."""

from __future__ import annotations

from pathlib import Path

BACKEND_HELP = "auto (what the package holds), torch, onnx, torchscript or pt2 (an export made by `modelcycle export`)."
OVERRIDES_HELP = "Config overrides as key=value, e.g. train.epochs=10 data.root=data/flowers run.name=flowers"


def split_config(config: str, overrides: list[str] | None) -> tuple[str | None, list[str]]:
    """`train data.root=x` (no file) is allowed: a first argument with '=' is an override."""
    overrides = list(overrides or [])
    if "=" in config and not Path(config).exists():
        return None, [config, *overrides]
    return config, overrides
