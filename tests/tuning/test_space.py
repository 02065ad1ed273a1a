"""The search-space file: every kind of entry, and every mistake found before any trial runs,
named with its file, line and key and what to do about it."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from helpers import assert_mentions
from modelcycle.config import Config, load_config
from modelcycle.errors import ConfigError
from modelcycle.tuning.space import apply, load_space

GOOD = """\
train.lr: {type: float, low: 1e-4, high: 0.1, log: true}   # YAML reads 1e-4 as text: still a number here
train.weight_decay: {type: float, low: 0.0, high: 0.001, step: 0.0005}
model.args.width: {type: int, low: 8, high: 32, step: 8}
train.optimizer: [adamw, sgd]
train.label_smoothing: {type: categorical, choices: [0.0, 0.1]}
"""


def _space(tmp_path: Path, text: str, sampler: str = "tpe", base: Config | None = None):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return load_space(path, base or Config(), sampler)


def test_every_kind_of_entry_is_read_and_sampled_within_its_bounds(tmp_path):
    space = _space(tmp_path, GOOD)
    assert space.keys == [
        "train.lr",
        "train.weight_decay",
        "model.args.width",
        "train.optimizer",
        "train.label_smoothing",
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = [space.suggest(study.ask()) for _ in range(30)]
    assert all(1e-4 <= s["train.lr"] <= 0.1 for s in seen)
    assert {s["train.weight_decay"] for s in seen} <= {0.0, 0.0005, 0.001}
    assert {s["model.args.width"] for s in seen} == {8, 16, 24, 32}
    assert {s["train.optimizer"] for s in seen} == {"adamw", "sgd"}
    config = apply(Config(), seen[0], run__name="trial-0000")
    assert config.model.args["width"] == seen[0]["model.args.width"]
    assert config.train.lr == seen[0]["train.lr"] and config.run.name == "trial-0000"


def test_grid_lists_every_value_and_refuses_a_continuous_float(tmp_path):
    grid = _space(
        tmp_path, GOOD.replace("log: true", "step: 0.05").replace("1e-4", "0.05").replace("0.1,", "0.2,"), "grid"
    ).grid()
    assert grid["train.lr"] == [0.05, 0.1, 0.15, 0.2]
    assert grid["train.weight_decay"] == [0.0, 0.0005, 0.001]
    assert grid["model.args.width"] == [8, 16, 24, 32]
    assert grid["train.optimizer"] == ["adamw", "sgd"]
    with pytest.raises(ConfigError) as info:
        _space(tmp_path, GOOD, "grid")
    assert_mentions(str(info.value), "space.yaml:1", "train.lr", "grid search", "list the values as choices")


BAD = """\
train.lrr: {type: float, low: 1e-4, high: 0.1}
train.weight_decay: {type: float, low: 0.1, high: 0.001}
train.momentum: {type: float, low: 0, high: 0.9, log: true}
train.optimizer: {type: categorical, choices: []}
data.image_size: {type: int, low: 4, high: 16}
"""


def test_every_problem_is_reported_at_once_with_file_line_and_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        _space(tmp_path, BAD)
    message = str(info.value)
    for line, fragments in [
        (1, ["unknown config key 'train.lrr'", "did you mean 'train.lr'"]),
        (2, ["train.weight_decay", "low (0.1) must be below high (0.001)"]),
        (3, ["train.momentum", "log range needs low > 0"]),
        (4, ["train.optimizer", "choices is empty"]),
        (5, ["data.image_size", "the value 4 is not accepted", "expected a whole number >= 8"]),
    ]:
        assert_mentions(message, f"space.yaml:{line}: ", *fragments)


@pytest.mark.parametrize(
    ("entry", "fragments"),
    [
        ("train.lr: {type: float, low: 0.001, high: 0.1, log: true, step: 0.01}", ["log and step cannot be combined"]),
        ("train.epochs: {type: int, low: 1.5, high: 4}", ["whole numbers"]),
        ("train.lr: {type: float, low: 0.1}", ["needs both low and high"]),
        ("train.lr: {type: gaussian, low: 0, high: 1}", ["'float', 'int' or 'categorical'"]),
        ("train.lr: {type: float, low: 0.0, high: 0.1, choise: [1]}", ["choise", "Extra inputs"]),
        ("train.lr: {type: float, low: -1.0, high: 0.1}", ["-1.0 is not accepted", "expected a number > 0"]),
        ("train.optimizer: [adamw, lion]", ["'lion' is not accepted", "expected one of sgd, adam, adamw"]),
        ("train.crop: [1, 2]", ["unknown config key 'train.crop'"]),
        ("run.name: [a, b]", ["cannot be searched", "run.*"]),
        ("train:\n  lr: {type: float, low: 0.001, high: 0.1}", ["'train' is a section", "train.NAME"]),
        ("model.args: [{width: 8}, {width: 16}]", ["single values"]),
        ("model.args.widht: {type: int, low: 8, high: 16}", ["simple_cnn takes no argument 'widht'", "width"]),
    ],
)
def test_a_bad_entry_is_a_clear_config_error(tmp_path, entry, fragments):
    with pytest.raises(ConfigError) as info:
        _space(tmp_path, entry + "\n")
    assert_mentions(str(info.value), "space.yaml", *fragments)


def test_model_args_are_checked_against_every_model_the_space_can_pick(tmp_path, linear_model_file):
    base = load_config(None, [f"model.name={linear_model_file}", "model.args={}"])
    with pytest.raises(ConfigError) as info:
        _space(tmp_path, "model.args.width: {type: int, low: 8, high: 16}\n", base=base)
    assert_mentions(str(info.value), "takes no argument 'width'")
    both = "model.name: [simple_cnn, resnet18]\nmodel.args.width: {type: int, low: 8, high: 16}\n"
    assert _space(tmp_path, both).keys == ["model.name", "model.args.width"]
    with pytest.raises(ConfigError) as info:  # a model that does not exist fails now, not in every trial
        _space(tmp_path, "model.name: [simple_cnn, resnet19]\n")
    assert_mentions(str(info.value), "unknown model 'resnet19'", "did you mean 'resnet18'")
    with pytest.raises(ConfigError) as info:  # the recipe's own model.args go to every model picked
        _space(
            tmp_path,
            f"model.name: [simple_cnn, '{linear_model_file}']\n",
            base=load_config(None, ["model.args={dropout: 0.1}"]),
        )
    assert_mentions(str(info.value), "takes no argument 'dropout'", "from the space or the recipe", "it takes none")


@pytest.mark.parametrize(
    ("text", "fragment"), [(None, "not found"), ("", "empty or not a mapping"), ("[1, 2]", "empty or not a mapping")]
)
def test_a_missing_or_empty_space_file_is_a_clear_error(tmp_path, text, fragment):
    path = tmp_path / "space.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_space(path, Config())


def test_the_example_space_fits_the_digits_recipe():
    repo = Path(__file__).resolve().parents[2]
    space = load_space(repo / "configs" / "space.yaml", load_config(repo / "configs" / "digits.yaml"))
    assert "train.lr" in space.keys and "model.args.width" in space.keys
