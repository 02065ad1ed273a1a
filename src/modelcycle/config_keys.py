"""Every config key as a user meets it: its dotted name, what it expects (in words), its default
and its description, read from the pydantic sections, whose ``Field(description=...)`` is the one
source (``modelcycle config show`` and ``config keys`` print it). Also here, because they need the
same index: the command line's shorthands (``epochs=5`` is ``train.epochs=5``, ``data=DIR`` is
``data.root=DIR``), a bare value for a list key, and a pydantic ValidationError put into our own
words (what key, where, what was given, what is expected), since pydantic's ("Input should be a
valid dictionary or instance of DataSection") names classes a user never wrote.

This module is in the lowest layer; ``modelcycle.config`` builds the one index over ``Config``.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from modelcycle.errors import ConfigError

# a section given a plain value (Ultralytics style, `data=datasets/digits`): the key it obviously means
SECTION_VALUE = {"data": "data.root", "model": "model.name"}
# a leaf of several sections that still has one everyday meaning on the command line
PREFERRED = {"batch_size": "train.batch_size", "seed": "train.seed"}

_WORDS = {  # type -> (one, several)
    int: ("a whole number", "whole numbers"),
    float: ("a number", "numbers"),
    bool: ("true or false", "true/false values"),
    str: ("text", "texts"),
    Any: ("any value", "values"),
}
_BOUNDS = ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"))
_BOUNDS += ((annotated_types.Le, "le", "<="), (annotated_types.Lt, "lt", "<"))


def expects(annotation: Any, metadata: list | tuple = ()) -> str:
    """What a field accepts, in the words of a recipe: ``a whole number >= 1``, ``one of sgd,
    adam, adamw``, ``a list of texts``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    bounds = " and ".join(
        f"{sign} {getattr(m, attr):g}" for m in metadata for kind, attr, sign in _BOUNDS if isinstance(m, kind)
    )
    if origin in (typing.Union, types.UnionType):
        text = " or ".join(expects(arg) for arg in args if arg is not type(None))
        text += f" {bounds}" * bool(bounds)
        return text + " or null" * (type(None) in args)
    if origin is Literal:
        return ("one of " if len(args) > 1 else "") + ", ".join(str(a) for a in args)
    if origin is list:
        return "a list of " + _WORDS.get(args[0], ("", "values"))[1] + ": [a, b], or one value alone"
    if origin is tuple:
        return f"{len(args)} {_WORDS.get(args[0], ('', 'values'))[1]} in brackets, e.g. [0.5, 1.0]"
    if origin is dict:
        return "a mapping, e.g. {depth: 18}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a section: its keys as SECTION.KEY=VALUE"
    return _WORDS.get(annotation, (getattr(annotation, "__name__", str(annotation)),))[0] + f" {bounds}" * bool(bounds)


def yaml_value(value: Any) -> str:
    """One value as a recipe writes it (``null``, ``[a, b]``, ``{}``), on one line."""
    text = yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True, width=2**30)
    return text.strip().removesuffix("...").strip()


@dataclass(frozen=True)
class Key:
    name: str  # dotted: train.epochs, model.lora.r
    field: FieldInfo

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def description(self) -> str:
        return self.field.description or ""

    @property
    def default(self) -> Any:
        return self.field.get_default(call_default_factory=True)

    @property
    def expects(self) -> str:
        return expects(self.field.annotation, self.field.metadata)

    @property
    def is_list(self) -> bool:
        ann = self.field.annotation
        return any(typing.get_origin(a) is list for a in (ann, *typing.get_args(ann)))


class KeyIndex:
    """The keys of one root model (``Config``): leaves, in declaration order, and sections."""

    def __init__(self, root: type[BaseModel]):
        self.keys: dict[str, Key] = {}
        self.sections: dict[str, type[BaseModel]] = {}
        self._walk(root, "")

    def _walk(self, model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                self.sections[prefix + name] = ann
                self._walk(ann, f"{prefix}{name}.")
            else:
                self.keys[prefix + name] = Key(prefix + name, field)

    def values(self, tree: dict) -> dict[str, Any]:
        """Dotted key -> its value in ``tree`` (a dumped config), for every key."""
        return {key: _lookup(tree, key, None) for key in self.keys}

    def homes(self, leaf: str) -> list[str]:
        return [key for key, k in self.keys.items() if k.leaf == leaf]

    def suggest(self, key: str) -> str:
        """``; did you mean 'train.epochs'?`` or nothing."""
        known = [*self.sections, *self.keys]
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or self.homes(key.rsplit(".", 1)[-1])[:1]
        if not close:  # a misspelt leaf without its section (`epoch=3`)
            leaves = difflib.get_close_matches(key.rsplit(".", 1)[-1], [k.leaf for k in self.keys.values()], n=1)
            close = self.homes(leaves[0])[:1] if leaves else []
        return f"; did you mean '{close[0]}'?" if close else ""

    # ------------------------------------------------------------ the command line's shorthands

    def resolve(self, key: str, value: Any, raw: str) -> tuple[str, str | None]:
        """The full key a command-line ``key=raw`` means, and the note that echoes it when the user
        wrote a shorthand. A name that could mean several keys is refused, listing them."""
        if "." in key:
            return key, None
        if key in self.sections:
            if isinstance(value, dict):  # train={epochs: 3}: a whole section, as in a file
                return key, None
            if key in SECTION_VALUE:
                return self._echo(key, SECTION_VALUE[key], raw)
            homes = self.homes(key)
            also = f"the key {homes[0]} ({homes[0]}={raw}), or " if homes else ""
            raise ConfigError(
                f"'{key}={raw}' (command line): '{key}' names {also}the section {key}, which takes keys: write "
                f"{key}.KEY=VALUE, e.g. {next(k for k in self.keys if k.startswith(key + '.'))}=...; "
                f"`modelcycle config keys` lists them"
            )
        homes = self.homes(key)
        if len(homes) == 1:
            return self._echo(key, homes[0], raw)
        if key in PREFERRED:
            others = ", ".join(h for h in homes if h != PREFERRED[key])
            full, note = self._echo(key, PREFERRED[key], raw)
            return full, f"{note}  (for {others}, write the key in full)"
        if homes:
            raise ConfigError(
                f"'{key}={raw}' (command line): '{key}' is a key of several sections ({', '.join(homes)}); "
                f"write the one you mean in full, e.g. {homes[0]}={raw}"
            )
        return key, None  # not a key at all: validation names the closest

    @staticmethod
    def _echo(short: str, full: str, raw: str) -> tuple[str, str]:
        return full, f"{short}={raw} -> {full}={raw}"

    def wrap_lists(self, tree: dict) -> None:
        """A bare value where a list is expected is a one-item list (``lm.train_files=a.jsonl``)."""
        for key in self.keys.values():
            if not key.is_list:
                continue
            *path, leaf = key.name.split(".")
            node = tree
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and isinstance(node.get(leaf), str | int | float | bool):
                node[leaf] = [node[leaf]]

    # ------------------------------------------------------------ errors in our words

    def explain(self, exc: ValidationError, tree: dict, origin: dict[str, str], source: str) -> str:
        return "invalid configuration:\n  " + "\n  ".join(self.problems(exc, tree, origin, source))

    def problems(self, exc: ValidationError, tree: dict, origin: dict[str, str], source: str) -> list[str]:
        """One line per key at fault: what key, where (file:line, the command line or ``source``),
        what was given (from ``tree``, else what pydantic saw) and what is expected."""
        problems: dict[str, str] = {}
        for err in exc.errors():
            loc = [str(part) for part in err["loc"]]
            if err["type"] == "extra_forbidden":
                key = ".".join(loc)
                problems[key] = f"unknown key '{key}'{_where(key, origin, source)}{self.suggest(key)}"
                continue
            prefixes = [".".join(loc[:n]) for n in range(len(loc), 0, -1)]
            key = next((k for k in prefixes if k in self.keys), None) or next(k for k in prefixes if k in self.sections)
            if key not in problems:  # a union reports once per member: the first says it
                problems[key] = self._problem(key, err, _lookup(tree, key, err.get("input")), origin, source)
        return list(problems.values())

    def _problem(self, key: str, err: dict, got: Any, origin: dict[str, str], source: str) -> str:
        where = _where(key, origin, source)
        if key in self.sections:
            hint = f"; did you mean {SECTION_VALUE[key]}={yaml_value(got)}?" if key in SECTION_VALUE else ""
            return (
                f"{key}{where} is a section, so it takes keys, not {yaml_value(got)}: write {key}.KEY=VALUE "
                f"on the command line or a mapping under '{key.rsplit('.', 1)[-1]}:' in a file "
                f"(`modelcycle config keys` lists them){hint}"
            )
        if err["type"] == "value_error":  # a validator of ours said why
            return f"{key}{where}: got {yaml_value(got)}; {err['ctx']['error']}"
        spec = self.keys[key]
        hint = ""
        choices = typing.get_args(spec.field.annotation) if typing.get_origin(spec.field.annotation) is Literal else ()
        close = difflib.get_close_matches(str(got), [str(c) for c in choices], n=1)
        if close:
            hint = f"; did you mean {close[0]}?"
        return f"{key}{where}: got {yaml_value(got)}; expected {spec.expects}{hint}"


def _where(key: str, origin: dict[str, str], source: str) -> str:
    """`` (file:line)``: the key's own origin, else a key inside it (a section), else the section
    around it, else ``source``; nothing when that is empty too (the caller says where)."""
    inside = next((o for k, o in origin.items() if k.startswith(key + ".")), None)
    around = next((origin[p] for p in _parents(key) if p in origin), None)
    where = origin.get(key) or inside or around or source
    return f" ({where})" if where else ""


def _parents(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)]


def _lookup(tree: dict, key: str, fallback: Any) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return fallback
        node = node[part]
    return node
