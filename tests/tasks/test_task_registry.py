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
    # classify's one default is its model; a recipe that names one comes back as it was
    plain = load_config(None, ["train.epochs=3"])
    assert plain.model.name is None and registry.apply_defaults(plain).model.name == "simple_cnn"
    named = load_config(None, ["model.name=resnet18"])
    assert registry.apply_defaults(named) is named


def test_a_model_from_elsewhere_gets_no_model_name():
    """model.init_from (ppo.policy) decides the model: no model.name=llama (or simple_cnn) is filled
    in for config.yaml to claim, and the other defaults still are."""
    for task in ("sft", "lm", "dpo", "reward"):
        config = registry.apply_defaults(load_config(None, [f"run.task={task}", "model.init_from=runs/x"]))
        assert config.model.name is None, task
    assert registry.apply_defaults(load_config(None, ["run.task=sft", "model.init_from=x"])).train.monitor == "val_loss"
    ppo = registry.apply_defaults(load_config(None, ["run.task=ppo", "ppo.policy=runs/x", "ppo.reward=runs/r"]))
    assert ppo.model.name is None and ppo.train.schedule == "none"
    assert registry.get("ppo").model_from == ("ppo.policy",)
    with pytest.raises(ValueError, match="model_from.*not config keys"):
        TaskPlugin(name="registry_bad_model_from", model_from=("model.from",))


def test_a_model_name_beside_the_key_that_decides_the_model_is_refused(tmp_path: Path):
    """A recipe's model.name with model.init_from on the command line: the run would train the
    init_from model while config.yaml names the other; model.name=null clears the recipe's."""
    recipe = tmp_path / "reward.yaml"
    recipe.write_text("run: {task: reward}\nmodel: {name: all-MiniLM-L6-v2}\n")
    both = registry.apply_defaults(load_config(recipe, ["model.init_from=runs/lm-sft"]))
    with pytest.raises(ConfigError, match=r"model.name=all-MiniLM-L6-v2 and model.init_from=runs/lm-sft: .*=null"):
        registry.check_reads(both)
    registry.check_reads(registry.apply_defaults(load_config(recipe, ["model.init_from=x", "model.name=null"])))
    registry.check_reads(registry.apply_defaults(load_config(None, ["model.init_from=runs/a"])))  # images: weights only


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


# ---------------------------------------------------------------- keys a task does not read


def _checked(*overrides: str, base: dict | None = None):
    config = registry.apply_defaults(load_config(None, list(overrides), base=base))
    registry.check_reads(config)
    return config


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (
            ["run.task=lm", "distill.temperature=3"],
            ["distill.temperature=3.0: run.task=lm does not read it", "run.task=classify or distill reads"],
        ),
        (["run.task=classify", "lm.context_length=64"], ["lm.context_length=64: run.task=classify does not read it"]),
        (["run.task=text_classify", "model.weights=x.pth"], ["model.weights=x.pth: run.task=text_classify"]),
        (["run.task=lm", "lm.end_of_turn=x", "model.weights=x.pth"], ["model.weights=x.pth: run.task=lm"]),
        (["run.task=text_classify", "distill.teacher=runs/t"], ["distill.teacher=runs/t: run.task=text_classify"]),
        (["run.task=text_classify", "data.image_size=32"], ["data.image_size=32: run.task=text_classify"]),
        (
            ["run.task=sft", "data.root=data/x"],
            ["data.root=data/x: run.task=sft", "reads model.{name,args,init_from,freeze,lora}, lm.*"],
        ),
        (["run.task=reward", "lm.tokenizer=runs/tok"], ["lm.tokenizer=runs/tok: run.task=reward"]),
        (["run.task=dpo", "lm.sample_every=5"], ["lm.sample_every=5: run.task=dpo"]),
        (["run.task=ppo", "ppo.policy=a", "ppo.reward=b", "model.init_from=runs/x"], ["model.init_from=runs/x"]),
        (
            ["run.task=lm", "reward.margin_scale=2", "dpo.beta=0.5"],
            ["reward.margin_scale=2.0, dpo.beta=0.5: run.task=lm does not read them, so they would be ignored"],
        ),
    ],
)
def test_a_key_the_task_does_not_read_is_a_config_error(overrides, fragments):
    """Issue 15: a key of a section the task never reads did nothing; it is a ConfigError naming
    the key and value, the task, what the task reads and what to do."""
    with pytest.raises(ConfigError) as info:
        _checked(*overrides)
    message = str(info.value)
    for fragment in [*fragments, "Remove", "from the recipe or the command line", "besides what every run reads"]:
        assert fragment in message, message


def test_defaults_and_values_equal_to_them_pass():
    _checked("run.task=lm")  # the task's defaults (model.name=llama) are filled, not the caller's
    _checked("run.task=classify", "lm.context_length=256", "distill.temperature=4")  # the defaults, spelled out
    _checked("run.task=lm", "data.max_length=128", "model.lora.r=0")
    full = registry.apply_defaults(load_config(None, ["run.task=sft"])).model_dump()
    _checked(base=full)  # a saved config.yaml sets every key (crossval and tuning pass the whole dump on)
    _checked("run.task=reward", "data.max_length=256", "lm.context_length=256")  # pair_length decides on that one


def test_every_shipped_recipe_passes_its_tasks_check():
    root = Path(__file__).resolve().parents[2] / "configs"
    recipes = sorted(r for r in root.glob("*.yaml") if not r.name.startswith("space"))
    tasks = set()
    for recipe in recipes:
        config = registry.apply_defaults(load_config(recipe))
        registry.check_reads(config)
        tasks.add(config.run.task)
    assert tasks == BUILT_IN - {"distill"}  # `modelcycle distill` builds its config from the teacher's


def test_training_refuses_an_unread_key_before_the_run_folder_appears(tmp_path: Path):
    config = load_config(None, ["run.task=lm", f"run.dir={tmp_path}", "distill.alpha=0.5"])
    with pytest.raises(ConfigError, match=r"distill.alpha=0.5: run.task=lm does not read it"):
        modelcycle.train(config, progress=False)
    assert not any(tmp_path.iterdir())


def test_a_plugin_that_declares_no_reads_reads_data_and_model():
    plugin = TaskPlugin(name="reads_test_task", defaults={"lm": {"size": "small"}})
    assert plugin.reads == ("data", "model")
    modelcycle.register_task(plugin, replace=True)
    assert _checked("run.task=reads_test_task", "data.root=x", "model.args={a: 1}").lm.size == "small"
    with pytest.raises(ConfigError, match=r"lm.size=base: run.task=reads_test_task does not read it"):
        _checked("run.task=reads_test_task", "lm.size=base")
    modelcycle.register_task(TaskPlugin(name="reads_test_task", reads=("lm.size",)), replace=True)
    _checked("run.task=reads_test_task", "lm.size=base")
    with pytest.raises(ConfigError, match=r"data.root=x: run.task=reads_test_task .* reads lm.size besides"):
        _checked("run.task=reads_test_task", "data.root=x")
    with pytest.raises(ValueError, match="not config keys"):
        TaskPlugin(name="x", reads=("lm.sise",))


def test_every_built_in_declares_what_it_reads():
    for name in BUILT_IN:
        reads = registry.get(name).reads
        assert reads and reads != ("data", "model"), name  # its own list, not the default for plugins of users
        assert not set(reads) & set(registry.ALWAYS_READ), name
