"""The sections of the typed configuration (``modelcycle.config.Config`` holds one of each): what
every key means (each field's ``description``: the one source that `modelcycle config show` and
`config keys` print, required of every field by tests/test_config_cli.py), its default and its
bounds. modelcycle.config re-exports every name here and reads the YAML recipe and the
``key=value`` overrides into them.

One module per part of the lifecycle: ``base`` (Section, model.freeze's modes), ``training``,
``deploy`` (serve, monitor, track) and ``lm`` (lm, reward, dpo, ppo). This package is in the lowest
layer: it imports nothing of modelcycle but ``errors``.
"""

from modelcycle.config_sections.base import FreezeMode, Section, parse_freeze
from modelcycle.config_sections.deploy import MonitorSection, ServeSection, TrackSection
from modelcycle.config_sections.lm import DPOSection, LMSection, PPOSection, RewardSection
from modelcycle.config_sections.training import (
    DataSection,
    DistillSection,
    EvalSection,
    LoraSection,
    ModelSection,
    RunSection,
    TrainSection,
    TuneSection,
)

__all__ = [
    "FreezeMode",
    "Section",
    "parse_freeze",
    "RunSection",
    "DataSection",
    "LoraSection",
    "ModelSection",
    "TrainSection",
    "EvalSection",
    "DistillSection",
    "TuneSection",
    "ServeSection",
    "MonitorSection",
    "TrackSection",
    "LMSection",
    "RewardSection",
    "DPOSection",
    "PPOSection",
]
