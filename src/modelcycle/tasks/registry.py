"""Task name -> :class:`TaskPlugin`. The one place a task name is looked up.

Where plugins come from, in this order (a later one with a taken name is refused):
1. the built-ins, each ``PLUGIN`` of a module in this package, imported on first use;
2. the ``modelcycle.tasks`` entry-point group of installed distributions (a ``TaskPlugin``, or a
   module with ``PLUGIN``), read with importlib.metadata on first use;
3. the modules named in the environment variable ``MODELCYCLE_TASKS`` (comma-separated), imported
   on first use: an explicit opt-in, because importing a module runs its code. The module either
   calls :func:`register_task` or has a ``PLUGIN``;
4. :func:`register_task` (``modelcycle.register_task``), at any time.

Plugins never import this module, so nothing here can form an import cycle.
"""

from __future__ import annotations

import difflib
import importlib
import os
import threading
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from modelcycle.errors import ConfigError, UserError
from modelcycle.packages import CAUSAL
from modelcycle.tasks.plugin import TaskPlugin
from modelcycle.track.listing import TaskView

if TYPE_CHECKING:
    from modelcycle.config import Config

GROUP = "modelcycle.tasks"
ENV = "MODELCYCLE_TASKS"
# the config sections every run reads, whatever its task; a plugin's ``reads`` names the others it reads
ALWAYS_READ = ("run", "train", "eval", "track", "tune", "serve", "monitor")
_BUILTIN = ("classify", "text_classify", "distill", "lm", "sft", "reward", "dpo", "ppo")

_plugins: dict[str, TaskPlugin] = {}
_loaded = False
_lock = threading.RLock()


def register_task(plugin: TaskPlugin | ModuleType, replace: bool = False) -> TaskPlugin:
    """Make ``plugin`` (or a module's ``PLUGIN``) the task ``plugin.name``: ``run.task=NAME`` then
    trains it and packages recording that task are evaluated with it. A taken name is an error
    unless ``replace=True``."""
    plugin = _as_plugin(plugin, "register_task")
    with _lock:
        _load()
        if plugin.name in _plugins and not replace and _plugins[plugin.name] is not plugin:
            raise UserError(f"task {plugin.name!r} is already registered; pass replace=True to replace it")
        _plugins[plugin.name] = plugin
    return plugin


def names() -> list[str]:
    with _lock:
        _load()
        return sorted(_plugins)


def get(name: str) -> TaskPlugin:
    """The plugin of ``run.task=name``; an unknown name is a ConfigError listing the known ones."""
    with _lock:
        _load()
        plugin = _plugins.get(name)
    if plugin is None:
        known = names()
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"run.task={name}: unknown task{hint} Known tasks: {', '.join(known)}. A task of your own is registered "
            f"with modelcycle.register_task, an entry point in the '{GROUP}' group, or {ENV}=your_module"
        )
    return plugin


def for_config(config: Config) -> TaskPlugin:
    return get(config.run.task)


def for_manifest(manifest: Mapping | None) -> TaskPlugin:
    """The plugin that reads a package: its recorded task (``classify`` when it records none,
    as the first packages did); a foreign folder (``manifest`` None) goes to the plugin that
    declares itself the default for language models."""
    if manifest is None:  # a plain Hugging Face folder without one of our manifests
        return for_kind(CAUSAL)
    task = manifest.get("task", "classify")
    try:
        return get(task)
    except ConfigError:
        raise UserError(
            f"{manifest.get('_dir', 'the package')} holds a model of task {task!r}, which no registered task reads "
            f"(known: {', '.join(names())}); register its plugin ({ENV}=module, or an entry point in '{GROUP}')"
        ) from None


def for_kind(kind: str) -> TaskPlugin:
    for name in names():
        plugin = get(name)
        if kind in plugin.opens_foreign:
            return plugin
    raise UserError(f"no registered task reads a {kind} folder")


def for_package(path: str | Path) -> TaskPlugin:
    """The plugin of a run folder or model package, or of a foreign folder (a downloaded Hugging
    Face model, a bare peft adapter) by its kind; the folder is found as open_package finds it."""
    from modelcycle.packages import open_package

    package = open_package(path)
    if package.manifest is None:
        return for_kind(package.kind)
    return for_manifest(package.manifest)


def apply_defaults(config: Config) -> Config:
    """``config`` with its task's defaults filled into every field the caller left unset
    (pydantic's ``model_fields_set``): what the recipe file, the overrides or the Python caller
    set always wins, and a Python ``run.task=lm`` gets what ``modelcycle lm pretrain`` gets.
    When a key of the plugin's ``model_from`` is set (``model.init_from``), that decides the model:
    the task's ``model`` defaults are left out, so no ``model.name`` is filled in that the run
    does not use."""
    plugin = get(config.run.task)
    defaults = plugin.defaults
    if any(_setting(config, key) for key in plugin.model_from):
        defaults = {key: value for key, value in defaults.items() if key != "model"}
    return _fill(config, defaults)


def task_view(task: str) -> TaskView | None:
    """How ``modelcycle runs`` and ``compare`` list runs of ``task``: grouped with the task its
    packages record (a distilled student is a classifier, ranked with classify's runs) and ranked
    by its summary metrics; None for a task no registered plugin knows (its runs are a group of
    their own)."""
    try:
        plugin = get(task)
    except ConfigError:
        return None
    return TaskView(plugin.writes, plugin.summary_metrics)


def _setting(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part, None)
    return config


def check_reads(config: Config) -> None:
    """Refuse, before any work, every key the caller set to a value of its own (other than the
    field's default or the task's) in a section the task does not read (``plugin.reads`` plus
    :data:`ALWAYS_READ`): ``distill.temperature=3`` on an LM run would otherwise do nothing at all.
    What ``apply_defaults`` filled in is the task's default, so it passes."""
    plugin = get(config.run.task)
    _refuse_two_models(config, plugin)
    unread = _unread(config, plugin.defaults, "", {*ALWAYS_READ, *plugin.reads})
    if not unread:
        return
    settings = ", ".join(f"{key}={value}" for key, value in unread)
    it, they = ("it", "it") if len(unread) == 1 else ("them", "they")
    others = []
    for key, _ in unread:
        readers = [name for name in names() if name != plugin.name and _covers({*ALWAYS_READ, *get(name).reads}, key)]
        if readers:
            others.append(f"run.task={' or '.join(readers)} reads {key}")
    hint = f" ({'; '.join(others)})" if others else ""
    raise ConfigError(
        f"{settings}: run.task={plugin.name} does not read {it}, so {they} would be ignored{hint}. "
        f"run.task={plugin.name} reads {_spelled(plugin.reads) or 'nothing more'} besides what every run reads "
        f"({_spelled(ALWAYS_READ)}). Remove {it} from the recipe or the command line"
    )


def _refuse_two_models(config: Config, plugin: TaskPlugin) -> None:
    """``model.name`` and a key of ``model_from`` (``model.init_from``) both set, for a task that
    reads both: the second decides the model, so config.yaml would name one the run did not use."""
    given = [(key, value) for key in plugin.model_from if (value := _setting(config, key))]
    name = config.model.name
    if not given or name is None or not _covers({*ALWAYS_READ, *plugin.reads}, "model.name"):
        return
    key, value = given[0]
    raise ConfigError(
        f"model.name={name} and {key}={value}: run.task={plugin.name} trains the model of {key}, so model.name "
        f"would not be used; set one of them (after a recipe that names a model, add model.name=null)"
    )


def _spelled(reads: tuple[str, ...]) -> str:
    """``("data.root", "data.max_length", "model")`` -> ``data.{root,max_length}, model.*``."""
    groups: dict[str, list[str]] = {}
    for entry in reads:
        section, _, key = entry.partition(".")
        groups.setdefault(section, []).append(key or "*")
    return ", ".join(
        f"{section}.{keys[0]}" if len(keys) == 1 else f"{section}.{{{','.join(keys)}}}"
        for section, keys in groups.items()
    )


def _covers(readable: set[str], key: str) -> bool:
    """``key`` (``model.lora.r``) is read if it or a section above it (``model.lora``, ``model``) is."""
    parts = key.split(".")
    return any(".".join(parts[:n]) in readable for n in range(1, len(parts) + 1))


def _unread(section: Any, defaults: Mapping, prefix: str, readable: set[str]) -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf under ``section`` that is set (``model_fields_set``),
    differs from its default (the task's, else the field's) and is not read."""
    found = []
    blank = type(section)()
    for key in type(section).model_fields:
        dotted, value = prefix + key, getattr(section, key)
        if _covers(readable, dotted):
            continue
        own = defaults.get(key)  # the task's default, if it has one
        if hasattr(value, "model_fields_set"):  # a section (model.lora): its own set keys, whatever its parent's
            found += _unread(value, own if isinstance(own, Mapping) else {}, dotted + ".", readable)
        elif key in section.model_fields_set and value != (own if key in defaults else getattr(blank, key)):
            found.append((dotted, value))
    return found


def _fill(section: Any, defaults: Mapping) -> Any:
    update = {}
    for key, value in defaults.items():
        if key not in type(section).model_fields:
            raise ConfigError(f"task defaults name '{key}', which is not a config key")
        current = getattr(section, key)
        if isinstance(value, Mapping) and hasattr(current, "model_fields_set"):
            filled = _fill(current, value)
            if filled is not current:
                update[key] = filled
        elif key not in section.model_fields_set:
            update[key] = value
    if not update:
        return section
    # validated like any other value: a default of the wrong type fails here, not mid-run
    data = {**section.model_dump(exclude_unset=True), **update}
    data = {k: v.model_dump(exclude_unset=True) if hasattr(v, "model_dump") else v for k, v in data.items()}
    return type(section).model_validate(data)


def _as_plugin(obj: Any, where: str) -> TaskPlugin:
    if isinstance(obj, ModuleType):
        obj = getattr(obj, "PLUGIN", None)
    if not isinstance(obj, TaskPlugin):
        raise UserError(f"{where}: expected a TaskPlugin (or a module with PLUGIN = TaskPlugin(...)), got {obj!r}")
    return obj


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # before the imports: a user module that calls register_task comes back here
    for name in _BUILTIN:
        plugin = _as_plugin(importlib.import_module(f"modelcycle.tasks.{name}"), f"modelcycle.tasks.{name}")
        _plugins[plugin.name] = plugin
    for entry in metadata.entry_points(group=GROUP):
        _add(_as_plugin(entry.load(), f"entry point {entry.name} = {entry.value}"), f"entry point {entry.value}")
    for module in filter(None, (m.strip() for m in os.environ.get(ENV, "").split(","))):
        try:
            loaded = importlib.import_module(module)
        except ImportError as exc:
            raise UserError(f"{ENV}={os.environ[ENV]}: cannot import {module} ({exc}); is it on PYTHONPATH?") from None
        if getattr(loaded, "PLUGIN", None) is not None:
            _add(_as_plugin(loaded, f"{ENV} module {module}"), f"{ENV} module {module}")


def _add(plugin: TaskPlugin, source: str) -> None:
    if plugin.name in _plugins and _plugins[plugin.name] is not plugin:
        raise UserError(f"{source}: task {plugin.name!r} is already registered")
    _plugins[plugin.name] = plugin
