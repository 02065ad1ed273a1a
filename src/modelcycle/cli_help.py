"""Help that reads like a man page. Typer 0.29 tags every parameter with its Python type in angle
brackets (``--resume <bool>``, ``config <str>``) and puts a required argument in braces in the
usage line (``train [OPTIONS] {config}``). Here a flag gets no tag, an option's value is named
the way click always named it (``--nproc INTEGER``, ``--out PATH``), and an argument is its name
in capitals (``train [OPTIONS] CONFIG [OVERRIDES]...``).

Typer offers no setting for this, so ``plain_help`` replaces three of its display methods once,
when cli.py builds the app. If a future Typer renames them, the help falls back to Typer's own
and tests/test_config_cli.py's help test fails, pointing here.
"""

from __future__ import annotations

_VALUE_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "path": "PATH", "bool": "BOOLEAN"}


def _value_name(tag: str | None) -> str | None:
    """``<int>`` -> ``INTEGER``; choices (``<a|b>``) stay as they are, without the brackets."""
    if tag is None:
        return None
    inner = tag.strip("<>").removesuffix(" range")  # <int range>: the range itself is shown beside it
    return _VALUE_NAMES.get(inner, inner.upper() if inner.isidentifier() else inner)


def plain_help() -> None:
    from typer import core

    option, argument = core.TyperOption, core.TyperArgument
    if getattr(option, "_modelcycle_plain", False) or not hasattr(argument, "_usage_display_name"):
        return
    typed = option.display_type_rich

    def option_type(self, ctx):
        if self.is_flag and not self.count:
            return None
        return self.metavar or _value_name(typed(self, ctx))

    def argument_usage(self) -> str:
        name = self.display_name_raw.upper()
        name = name if self.required else f"[{name}]"
        return name + "..." * (self.nargs != 1)

    option.display_type_rich = option_type
    argument.display_type_rich = lambda self, ctx: None  # the name in capitals says it is a value
    argument.display_name_raw = property(lambda self: (self.metavar or self.name or "").upper())
    argument._usage_display_name = argument_usage
    option._modelcycle_plain = True
