"""The base of every config section (unknown keys refused, assignments validated) and
``model.freeze``'s modes, parsed here in the config layer so that validating a config imports
nothing above it (models/freeze.py applies them to a model)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from modelcycle.errors import ConfigError

_FREEZE_PATTERN = re.compile(r"^(none|backbone|all_but_last:(\d+))$")


@dataclass(frozen=True)
class FreezeMode:
    kind: str  # none | backbone | all_but_last
    last: int = 0

    def __str__(self) -> str:
        return f"all_but_last:{self.last}" if self.kind == "all_but_last" else self.kind


def parse_freeze(text: str) -> FreezeMode:
    match = _FREEZE_PATTERN.match(str(text).strip())
    if not match:
        raise ConfigError(f"model.freeze: '{text}' is not a freeze mode; use none, backbone or all_but_last:N (N >= 1)")
    if match.group(2) is not None:
        last = int(match.group(2))
        if last < 1:
            raise ConfigError(
                "model.freeze: all_but_last:0 freezes as much as backbone does; use none, backbone or "
                "all_but_last:N (N >= 1)"
            )
        return FreezeMode("all_but_last", last)
    return FreezeMode(match.group(1))


# ---------------------------------------------------------------- the sections


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
