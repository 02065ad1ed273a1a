"""The search space: a YAML file of dotted config keys, each with a distribution.

    train.lr: {type: float, low: 0.0001, high: 0.1, log: true}
    model.args.width: {type: int, low: 8, high: 64, step: 8}
    train.optimizer: {type: categorical, choices: [adamw, sgd]}

The whole file is checked before the first trial (keys, ranges, and every bound or choice put
into a real Config and validated), because a mistake found at trial 17 wastes the 16 before it.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from modelcycle.config import KEYS, Config, _did_you_mean, _set_dotted, _yaml_lines, valid_keys
from modelcycle.errors import ConfigError

Scalar = None | bool | int | float | str
FORMAT = (
    "write each entry as KEY: {type: float|int|categorical, ...}, "
    "e.g. train.lr: {type: float, low: 1e-4, high: 0.1, log: true}"
)
MODEL_ARGS = "model.args."
RESERVED = ("run.", "tune.")  # the tuner owns the trial folders; tuning the tuner makes no sense


class _Entry(BaseModel):
    """The shape of one entry; meaning (ranges, keys) is checked afterwards with better words."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["float", "int", "categorical"]
    low: int | float | None = None  # int | float: YAML's `1e-4` arrives as text and becomes a float
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list[Any] | None = None


@dataclass(frozen=True)
class Param:
    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Scalar, ...] = ()

    def suggest(self, trial) -> Scalar:
        """Ask the Optuna trial for this parameter's value; the name is the dotted key."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> list[Scalar]:
        """Every value a grid search visits (floats need a step; checked when the file is read)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def describe(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        extra = {"log": True} if self.log else {"step": self.step} if self.step is not None else {}
        return {"type": self.type, "low": self.low, "high": self.high, **extra}

    def extremes(self) -> list[Scalar]:
        """The values that, if the config accepts them, make every value of the range acceptable."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    params: tuple[Param, ...]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def suggest(self, trial) -> dict[str, Scalar]:
        return {p.key: p.suggest(trial) for p in self.params}

    def grid(self) -> dict[str, list[Scalar]]:
        return {p.key: p.grid() for p in self.params}

    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.grid().values())

    def describe(self) -> dict[str, dict]:
        """A plain record of the space, kept with the study to notice a changed file on resume."""
        return {p.key: p.describe() for p in self.params}


def apply(base: Config, params: dict[str, Scalar], **fixed: Scalar) -> Config:
    """``base`` with the parameters (and ``fixed`` keys, ``run__name=...``) set, validated."""
    try:
        return _build(base, {**params, **{k.replace("__", "."): v for k, v in fixed.items()}})
    except ValidationError as exc:
        reasons = "; ".join(KEYS.problems(exc, {}, {}, ""))
        raise ConfigError(f"parameters {params} give an invalid configuration: {reasons}") from None


def _build(base: Config, values: dict[str, Scalar]) -> Config:
    tree = base.model_dump(mode="json")
    for key, value in values.items():
        _set_dotted(tree, key, value)
    return Config.model_validate(tree)


def _reasons(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors())


def load_space(path: str | Path, base: Config, sampler: str = "tpe") -> SearchSpace:
    """Read and check the whole file; one ConfigError lists every problem with its line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space file {path} not found; see configs/space.yaml for an example")
    text = path.read_text()
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict) or not tree:
        raise ConfigError(f"{path}: the search space is empty or not a mapping; {FORMAT}")
    lines = _yaml_lines(text)
    params, problems = [], []
    for key, raw in tree.items():
        key = str(key)
        where = f"{path}:{lines[key]}" if key in lines else str(path)
        try:
            param = _parse(key, raw)
            _check_key(key, base)
            _check_range(param, sampler)
            _check_values(param, base)
        except ConfigError as exc:
            problems.append(f"{where}: {exc}")
            continue
        params.append(param)
    if problems:
        raise ConfigError(f"search space {path} is not valid:\n  " + "\n  ".join(problems))
    _check_models(params, base, path)
    return SearchSpace(path, tuple(params))


def _parse(key: str, raw: Any) -> Param:
    if isinstance(raw, list):  # `train.optimizer: [adamw, sgd]` is short for a categorical
        raw = {"type": "categorical", "choices": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a mapping, got {raw!r}; {FORMAT}")
    if "type" not in raw and key in [k for k in valid_keys() if "." not in k]:
        raise ConfigError(f"'{key}' is a section; name each parameter as a dotted key, e.g. {key}.NAME: {{...}}")
    try:
        entry = _Entry.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{key}: {_reasons(exc)}; {FORMAT}") from None
    return Param(key, entry.type, entry.low, entry.high, entry.log, entry.step, tuple(entry.choices or ()))


def _check_key(key: str, base: Config) -> None:
    if key.startswith(RESERVED):
        raise ConfigError(f"{key} cannot be searched: the tuner sets run.* (trial folders) and tune.* itself")
    if key.startswith(MODEL_ARGS) and len(key) > len(MODEL_ARGS):
        return  # a builder argument; checked against the builder in _check_models
    leaves = [k for k in valid_keys() if "." in k]
    if key not in leaves:
        hint = _did_you_mean(key) or "; see docs/config.md for the keys (builder arguments: model.args.NAME)"
        raise ConfigError(f"unknown config key '{key}'{hint}")


def _check_range(p: Param, sampler: str) -> None:
    if p.type == "categorical":
        if not p.choices:
            raise ConfigError(f"{p.key}: choices is empty; list at least one value, e.g. choices: [0.1, 0.2]")
        if extra := [n for n in ("low", "high", "step") if getattr(p, n) is not None] + (["log"] if p.log else []):
            raise ConfigError(f"{p.key}: a categorical takes only choices, not {', '.join(extra)}")
        if bad := [c for c in p.choices if not isinstance(c, Scalar)]:
            raise ConfigError(
                f"{p.key}: choices must be single values (number, text, true/false, null), got {bad[0]!r}"
            )
        return
    if p.choices:
        raise ConfigError(f"{p.key}: choices go with type: categorical, not {p.type}")
    if p.low is None or p.high is None:
        raise ConfigError(f"{p.key}: a {p.type} needs both low and high")
    if p.low >= p.high:
        raise ConfigError(
            f"{p.key}: low ({p.low}) must be below high ({p.high}); for one fixed value set it in the recipe"
        )
    if p.log and p.low <= 0:
        raise ConfigError(f"{p.key}: a log range needs low > 0 (got {p.low}); use e.g. low: 1e-5, or log: false")
    if p.log and p.step is not None:
        raise ConfigError(f"{p.key}: log and step cannot be combined; drop one (or list the values as choices)")
    if p.step is not None and p.step <= 0:
        raise ConfigError(f"{p.key}: step must be positive (got {p.step})")
    if p.type == "int" and not all(float(v).is_integer() for v in (p.low, p.high, p.step or 1)):
        raise ConfigError(f"{p.key}: an int range needs whole numbers for low, high and step; or use type: float")
    if sampler == "grid" and p.type == "float" and p.step is None:
        how = "list the values as choices" if p.log else "add a step (e.g. step: 0.1) or list the values as choices"
        raise ConfigError(f"{p.key}: a grid search cannot enumerate a continuous float range; {how}")


def _check_values(p: Param, base: Config) -> None:
    """Put each bound or choice into the recipe and validate, so `data.image_size: {low: 4}`
    fails now with the config's own rule (>= 8) instead of failing trials later."""
    for value in p.extremes():
        try:
            _build(base, {p.key: value})
        except ValidationError as exc:
            reasons = "; ".join(KEYS.problems(exc, {}, {}, "")).removeprefix(p.key + ": ")
            raise ConfigError(f"{p.key}: the value {value!r} is not accepted by the config: {reasons}") from None


def _check_models(params: list[Param], base: Config, path: Path) -> None:
    """Every model the space can pick must exist and take every ``model.args`` it will be given
    (the space's, and the recipe's too when the model itself varies)."""
    names = next((p.choices for p in params if p.key == "model.name"), None)
    args = {p.key[len(MODEL_ARGS) :] for p in params if p.key.startswith(MODEL_ARGS)}
    if names is None and not args:
        return
    if names is not None:
        args |= set(base.model.args)
    from modelcycle.models.registry import resolve_builder  # imports torch: only when needed
    from modelcycle.tasks import registry

    for name in names or (registry.apply_defaults(base).model.name,):  # the recipe's model, or its task's default
        try:
            accepted = inspect.signature(resolve_builder(str(name))).parameters
        except ConfigError as exc:
            raise ConfigError(f"search space {path}: {exc}") from None
        if any(a.kind is inspect.Parameter.VAR_KEYWORD for a in accepted.values()):
            continue
        if unknown := sorted(a for a in args if a not in accepted):
            takes = [a for a in accepted if a not in ("in_channels", "num_classes", "image_size")]
            raise ConfigError(
                f"search space {path}: model {name} takes no argument {', '.join(map(repr, unknown))} "
                f"(model.args.{unknown[0]}, from the space or the recipe); "
                + (f"it takes {', '.join(takes)}" if takes else "it takes none")
            )
