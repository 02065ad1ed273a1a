"""The task registry: every built-in declares its plugin, run.task is checked against what is
registered, and a task's defaults fill only what the recipe left unset."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import modelcycle
from modelcycle.config import load_config
from modelcycle.errors import ConfigError, UserError
from modelcycle.tasks import registry
from modelcycle.tasks.plugin import TaskPlugin

BUILT_IN = {"classify", "text_classify", "distill", "lm", "sft", "reward", "dpo", "ppo"}


def test_every_built_in_task_has_a_plugin_named_like_its_module():
    assert set(registry.names()) >= BUILT_IN
    for name in BUILT_IN:
        plugin = registry.get(name)
        assert plugin.name == name and importlib.import_module(f"modelcycle.tasks.{name}").PLUGIN is plugin
        assert plugin.setup is not None or plugin.loop is not None


def test_an_unknown_task_is_a_config_error_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"run.task=sfft: unknown task; did you mean 'sft'\?.*classify, distill"):
        registry.get("sfft")
    with pytest.raises(ConfigError, match="run.task"):
        load_config(None, ["run.task=not a name"])


def test_defaults_fill_only_what_the_recipe_left_unset(tmp_path: Path):
    assert registry.apply_defaults(load_config(None, ["run.task=sft"])).model.name == "llama"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("run: {task: lm}\nmodel: {name: some/folder}\n")
    config = registry.apply_defaults(load_config(recipe))
    assert config.model.name == "some/folder" and config.train.monitor == "val_loss"
    # classify has no defaults: the config comes back as it was
    plain = load_config(None, ["train.epochs=3"])
    assert registry.apply_defaults(plain) is plain


def test_a_python_config_gets_what_the_lm_verb_gets(tmp_path: Path):
    """The CLI verb and a Python caller resolve the same recipe to the same config."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: {epochs: 2}\nlm: {context_length: 64}\n")
    python = registry.apply_defaults(load_config(recipe, ["run.task=lm"]))
    assert (python.model.name, python.train.monitor, python.train.epochs) == ("llama", "val_loss", 2)


def test_registering_a_task_and_refusing_a_taken_name():
    plugin = TaskPlugin(name="registry_test_task", defaults={"train": {"epochs": 7}})
    assert modelcycle.register_task(plugin) is plugin
    assert registry.get("registry_test_task") is plugin
    assert registry.apply_defaults(load_config(None, ["run.task=registry_test_task"])).train.epochs == 7
    with pytest.raises(UserError, match="already registered"):
        modelcycle.register_task(TaskPlugin(name="registry_test_task"))
    with pytest.raises(ValueError, match="unknown capabilities"):
        TaskPlugin(name="x", capabilities=frozenset({"teleport"}))


def test_a_package_of_an_unregistered_task_says_how_to_register_it(tmp_path: Path):
    (tmp_path / "modelcycle.json").write_text(json.dumps({"format": 1, "task": "segment_things"}))
    with pytest.raises(UserError, match="task 'segment_things'.*MODELCYCLE_TASKS"):
        registry.for_manifest({"task": "segment_things", "_dir": str(tmp_path)})


def test_modelcycle_tasks_imports_the_named_module_only_when_asked(tmp_path: Path):
    (tmp_path / "env_task.py").write_text(
        "from modelcycle.tasks.plugin import TaskPlugin\nPLUGIN = TaskPlugin(name='env_task')\n"
    )
    code = "from modelcycle.tasks import registry; print('env_task' in registry.names())"
    env = {"PYTHONPATH": str(tmp_path), "PATH": ""}
    with_it = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "MODELCYCLE_TASKS": "env_task"},
        text=True,
        capture_output=True,
        timeout=120,
    )
    without = subprocess.run([sys.executable, "-c", code], env=env, text=True, capture_output=True, timeout=120)
    assert with_it.stdout.strip() == "True", with_it.stderr
    assert without.stdout.strip() == "False", without.stderr
    missing = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "MODELCYCLE_TASKS": "no_such_module"},
        text=True,
        capture_output=True,
        timeout=120,
    )
    assert missing.returncode != 0 and "MODELCYCLE_TASKS=no_such_module: cannot import" in missing.stderr
