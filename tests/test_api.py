"""The public API as the README shows it: verbs are functions on the package, whatever else has
been imported (a sub-package named like a verb once shadowed ``modelcycle.evaluate``)."""

from __future__ import annotations

import importlib
import pkgutil

import modelcycle


def test_every_public_name_is_the_documented_callable_after_importing_everything():
    for info in pkgutil.walk_packages(modelcycle.__path__, "modelcycle."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    for name in modelcycle.__all__:
        value = getattr(modelcycle, name)
        assert callable(value), f"modelcycle.{name} is {type(value).__name__}, not the API function or class"
