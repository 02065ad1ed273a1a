"""`modelcycle config ...`: every setting, findable from the command line. `show` prints the config a
run would get (recipe, overrides and the task's defaults applied) as a recipe with each key's
description, and warns of any key train would refuse; `keys` lists every key with what it expects,
its default and its description. Both read the descriptions from the pydantic fields
(config_sections.py), so the text cannot drift from the code."""

from __future__ import annotations

import typer
from pydantic import BaseModel

from modelcycle.cli_common import OVERRIDES_HELP, split_config
from modelcycle.progress import stdout

config_app = typer.Typer(
    help="Find every setting: `config show` prints the resolved config with a description per key, "
    "`config keys` lists every key with its type and default.",
    no_args_is_help=True,
)

TASK = typer.Option(
    None, "--task", help="Apply this task's defaults (classify, lm, sft, ...), over the recipe's run.task."
)


def _resolve(config: str | None, overrides: list[str] | None, task: str | None):
    from modelcycle.config import load_config
    from modelcycle.tasks import registry

    path, overrides = split_config(config, overrides) if config else (None, list(overrides or []))
    cfg = registry.apply_defaults(load_config(path, [*overrides, *([f"run.task={task}"] if task else [])]))
    read = {*registry.ALWAYS_READ, *(key.split(".")[0] for key in registry.get(cfg.run.task).reads)}
    return cfg, read


@config_app.command()
def show(
    config: str | None = typer.Argument(None, help="YAML recipe, or a first key=value override; none: the defaults."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    task: str | None = TASK,
):
    """Print the resolved config (task defaults and overrides applied) as YAML, a description beside each key;
    the output is itself a recipe (`config show ... > my.yaml`). A key train would refuse (set in a section
    the task does not read) is named in a warning on stderr, and the config is still shown."""
    cfg, read = _resolve(config, overrides, task)
    _warn_refused(cfg)
    lines = [f"# the config of a run.task={cfg.run.task} run: recipe, overrides and the task's defaults applied"]
    lines += _render(type(cfg), cfg.model_dump(mode="json"), "", read)
    stdout.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


def _warn_refused(cfg) -> None:
    """train's and tune's own check (registry.check_reads), as a warning: `show` is where a user looks at a
    config to find what is wrong with it, so it shows the whole config and says what train would refuse."""
    from rich.markup import escape

    from modelcycle.errors import ConfigError
    from modelcycle.progress import warn
    from modelcycle.tasks import registry

    try:
        registry.check_reads(cfg)
    except ConfigError as exc:
        warn(f"train and tune would refuse this config: {escape(str(exc))}")


def _render(model: type[BaseModel], values: dict, prefix: str, read: set[str]) -> list[str]:
    from modelcycle.config import KEYS
    from modelcycle.config_keys import yaml_value

    indent = "  " * prefix.count(".")
    rows: list[tuple[str, str]] = []
    for name, field in model.model_fields.items():
        key = prefix + name
        if key in KEYS.sections:
            unread = "" if prefix or key in read else "  # not read by this task (run.task)"
            rows.append((f"{indent}{name}:{unread}", ""))
            rows += [(line, "") for line in _render(field.annotation, values[name], key + ".", read)]
        else:
            rows.append((f"{indent}{name}: {yaml_value(values[name])}", KEYS.keys[key].description))
    width = min(44, max((len(text) for text, desc in rows if desc), default=0))
    return [f"{text:<{width}}  # {desc}" if desc else text for text, desc in rows]


@config_app.command()
def keys(task: str | None = TASK):
    """List every key: its default (the task's, with --task), what it expects and what it does."""
    from modelcycle.config import KEYS
    from modelcycle.config_keys import yaml_value

    cfg, _ = _resolve(None, [], task)
    width = max(len(k) for k in KEYS.keys)
    shown = {key: yaml_value(value) for key, value in KEYS.values(cfg.model_dump(mode="json")).items()}
    value_width = min(20, max(len(v) for v in shown.values()))
    section = None
    for key, spec in KEYS.keys.items():
        if key.split(".")[0] != section and section is not None:
            stdout.print()
        section = key.split(".")[0]
        line = f"{key:<{width}}  {shown[key]:<{value_width}}  {spec.description}  (expects {spec.expects})"
        stdout.print(line, markup=False, highlight=False, soft_wrap=True)
