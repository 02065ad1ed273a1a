"""Typed configuration: one pydantic model per section, YAML file + ``key=value`` overrides.

Unknown keys fail before any work, naming the closest valid key and where the bad key was
(file and line, or the command line), because a typo that silently falls back to a default
wastes a whole training run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from modelcycle import config_sections
from modelcycle.config_keys import KeyIndex
from modelcycle.config_sections import (  # the sections live there; their names stay importable from here
    DataSection,
    DistillSection,
    DPOSection,
    EvalSection,
    FreezeMode,  # noqa: F401 -- these three are re-exported only (__all__)
    LMSection,
    LoraSection,  # noqa: F401
    ModelSection,
    MonitorSection,
    PPOSection,
    RewardSection,
    RunSection,
    Section,
    ServeSection,
    TrackSection,
    TrainSection,
    TuneSection,
    parse_freeze,  # noqa: F401
)
from modelcycle.errors import ConfigError
from modelcycle.progress import info
from modelcycle.runfiles import read_text

__all__ = [  # the sections (config_sections' names), importable from here too
    "Config",
    *config_sections.__all__,
    "KEYS",
    "load_config",
    "valid_keys",
    "flatten",
    "parse_override",
]


class Config(Section):
    run: RunSection = Field(default_factory=RunSection)
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    distill: DistillSection = Field(default_factory=DistillSection)
    tune: TuneSection = Field(default_factory=TuneSection)
    serve: ServeSection = Field(default_factory=ServeSection)
    monitor: MonitorSection = Field(default_factory=MonitorSection)
    track: TrackSection = Field(default_factory=TrackSection)
    lm: LMSection = Field(default_factory=LMSection)
    reward: RewardSection = Field(default_factory=RewardSection)
    dpo: DPOSection = Field(default_factory=DPOSection)
    ppo: PPOSection = Field(default_factory=PPOSection)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: Path) -> None:
        path.write_text(self.to_yaml())


KEYS = KeyIndex(Config)  # every key's type, default and description (`modelcycle config keys`)

# ---------------------------------------------------------------- loading and overrides


def valid_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted key the config accepts (sections and leaves)."""
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        keys.append(key)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(valid_keys(ann, key + "."))
    return keys


def _yaml_lines(text: str) -> dict[str, int]:
    """Map dotted key -> 1-based line in the YAML text, for error messages."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = f"{prefix}{key_node.value}"
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key + ".")

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def flatten(tree: dict, prefix: str = "", whole: tuple[str, ...] = ("args",)) -> dict:
    """Nested sections -> dotted keys (``train.lr``); mappings named in ``whole`` stay one value."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in whole:
            out.update(flatten(value, f"{prefix}{key}.", whole))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}=...: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not key=value; write for example train.epochs=10")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _is_text_field(key: str) -> bool:
    model: type[BaseModel] = Config
    *sections, leaf = key.split(".")
    for name in sections:
        field = model.model_fields.get(name)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return False
        model = field.annotation
    field = model.model_fields.get(leaf)
    return field is not None and field.annotation in (str, str | None)


def _did_you_mean(key: str) -> str:
    return KEYS.suggest(key)  # a right leaf in the wrong section ("run.epochs") is suggested too


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict | None = None,
) -> Config:
    """Read a YAML recipe, apply ``key=value`` overrides, and validate everything at once."""
    tree: dict = dict(base or {})
    origin: dict[str, str] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found; pass a YAML file such as configs/digits.yaml")
        text = read_text(path, "config file", "save it as UTF-8 text, or restore it from a copy")
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (run:, data:, train:, ...)")
        tree = _merge(tree, loaded)
        source = str(path)
        origin = {k: f"{path}:{line}" for k, line in _yaml_lines(text).items()}
    for item in overrides:
        key, value = parse_override(item)
        key, note = KEYS.resolve(key, value, item.split("=", 1)[1])  # epochs=5 is train.epochs=5
        if note and os.environ.get("RANK", "0") == "0":  # said once, not by every torchrun process
            info(note)
        key = _ALIASES.get(key.split(".", 1)[0], "") + key if "." in key else key
        if value is not None and _is_text_field(key):  # run.name=2024 is a name, not a number
            value = item.split("=", 1)[1]
        _set_dotted(tree, key, value)
        origin[key] = "command line"
    for short, full in _ALIASES.items():  # a top-level `lora:` section in a file
        if isinstance(tree.get(short), dict):
            section = tree.pop(short)
            _set_dotted(tree, full + short, _merge(tree.get(full[:-1], {}).get(short, {}), section))
            origin.update({full + k: o for k, o in origin.items() if k.startswith(short + ".")})
    KEYS.wrap_lists(tree)  # lm.train_files=a.jsonl is the list [a.jsonl]
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(KEYS.explain(exc, tree, origin, source)) from None


# short prefixes the commands use: `lora.r=8` is `model.lora.r=8`
_ALIASES = {"lora": "model."}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
