"""Typed config: YAML + overrides, unknown keys caught before any work, errors that say where."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelcycle.config import Config, load_config, parse_override, valid_keys
from modelcycle.errors import ConfigError, UserError


def test_defaults_validate():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 10 and cfg.model.name is None and cfg.data.root is None


def test_yaml_file_then_overrides_win(tmp_path: Path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run:\n  name: from-file\ntrain:\n  epochs: 7\n  lr: 0.5\ndata:\n  crop_scale: [0.5, 1.0]\n")
    cfg = load_config(recipe, ["train.epochs=3", "model.args={width: 4}"])
    assert cfg.run.name == "from-file"
    assert cfg.train.epochs == 3  # the override beats the file
    assert cfg.train.lr == 0.5
    assert cfg.data.crop_scale == (0.5, 1.0)
    assert cfg.model.args == {"width": 4}


def test_saved_config_loads_back_equal(tmp_path: Path):
    cfg = load_config(None, ["train.epochs=4", "data.image_size=24", "model.args={width: 8}", "train.ema=true"])
    cfg.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_typo_in_override_names_the_right_key():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epoch=3"])
    message = str(info.value)
    assert "train.epoch" in message and "'train.epochs'" in message and "command line" in message
    assert isinstance(info.value, UserError)


def test_leaf_in_wrong_section_is_suggested():
    with pytest.raises(ConfigError, match=r"did you mean 'train\.epochs'"):
        load_config(None, ["run.epochs=3"])  # `epochs=3` alone is shorthand (tests/test_config_cli.py)


def test_typo_in_file_names_file_and_line(tmp_path: Path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run:\n  name: x\ntrain:\n  epochs: 3\n  batch_sise: 8\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    message = str(info.value)
    assert f"{recipe}:5" in message
    assert "'train.batch_size'" in message


def test_bad_value_names_key_origin_and_value(tmp_path: Path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  optimizer: adamx\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe, ["train.epochs=0"])
    message = str(info.value)
    assert "train.optimizer" in message and f"{recipe}:2" in message and "adamx" in message
    assert "train.epochs (command line)" in message  # both problems at once


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])


def test_override_below_a_value_says_command_line():
    # 'train.epochs' is a value; the error must blame the command line, not the defaults
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs.x=1"])
    assert "command line" in str(info.value)


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listing)


@pytest.mark.parametrize("name", ["2024", "001", "yes"])
def test_string_override_that_looks_like_a_number(name: str):
    # run.name=2024 is a run called "2024", not an integer to reject
    assert load_config(None, [f"run.name={name}"]).run.name == name


def test_override_values_are_parsed_as_yaml():
    assert parse_override("train.lr=3e-4") == ("train.lr", "3e-4")  # YAML 1.1: no dot, a string...
    cfg = load_config(None, ["train.lr=3e-4", "train.clip_grad=1.5", "data.mean=[0.1, 0.2, 0.3]"])
    assert cfg.train.lr == pytest.approx(3e-4)  # ...that validation still reads as a float
    assert cfg.train.clip_grad == 1.5 and cfg.data.mean == [0.1, 0.2, 0.3]


def test_valid_keys_lists_sections_and_leaves():
    keys = valid_keys()
    assert {"train", "train.epochs", "data.image_size", "model.args", "eval.topk"} <= set(keys)


def test_shipped_recipes_are_valid():
    root = Path(__file__).resolve().parents[1] / "configs"
    # search spaces (space*.yaml) are not recipes; tests/tuning checks them against theirs
    recipes = sorted(r for r in root.glob("*.yaml") if not r.name.startswith("space"))
    assert recipes
    for recipe in recipes:
        load_config(recipe)


def test_the_sections_stay_importable_from_config():
    """The sections live in config_sections.py (the lowest layer); every name modules import from
    modelcycle.config is the same object there, so isinstance checks and pydantic agree."""
    import modelcycle.config as config
    import modelcycle.config_sections as sections
    from modelcycle.models import freeze

    names = [name for name in vars(sections) if name.endswith("Section")]
    assert len(names) >= 15
    for name in names:
        assert getattr(config, name) is getattr(sections, name)
    assert freeze.parse_freeze is sections.parse_freeze  # models/freeze.py applies the modes config parses
    assert {field.annotation for field in Config.model_fields.values()} <= {getattr(sections, n) for n in names}
