"""Finding every setting (issue 19): `modelcycle config show` / `config keys` print each key with
its description (the pydantic field's, so a key without one fails here), the command line's
shorthands (`epochs=5`, `data=DIR`, a bare value for a list), errors in our own words (never
pydantic's), help without type tags, and one name for the top-k accuracy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from helpers import assert_mentions, assert_user_error, read_jsonl, run_cli, tiny_overrides
from modelcycle.cli import app
from modelcycle.config import Config, load_config
from modelcycle.errors import ConfigError
from modelcycle.evaluation.metrics import top5_label
from modelcycle.tasks import registry


def _fields(model: type[BaseModel] = Config, prefix: str = ""):
    """(dotted key, FieldInfo) of every leaf, read from pydantic itself (not from our index)."""
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _fields(field.annotation, f"{prefix}{name}.")
        else:
            yield prefix + name, field


def _invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def _commented_keys(text: str) -> dict[str, str]:
    """`config show`'s YAML: dotted key -> the comment beside it."""
    found, path = {}, []
    for line in text.splitlines():
        match = re.match(r"^( *)([a-z_0-9]+):(.*)$", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        path = [*path[:depth], match.group(2)]
        value, _, comment = match.group(3).partition("  # ")
        if value.strip():
            found[".".join(path)] = comment.strip()
    return found


def test_every_key_has_a_description_and_config_show_prints_it():
    fields = dict(_fields())
    missing = [key for key, field in fields.items() if not (field.description or "").strip()]
    assert not missing, f"config keys without Field(description=...): {missing}"

    shown = _invoke("config", "show").stdout
    assert _commented_keys(shown) == {key: field.description for key, field in fields.items()}
    resolved = registry.apply_defaults(Config())  # classify's defaults filled in (model.name=simple_cnn)
    assert yaml.safe_load(shown) == resolved.model_dump(mode="json")  # the output is itself a recipe


def test_config_show_applies_the_recipe_the_overrides_and_the_task_defaults(tmp_path: Path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run:\n  name: mine\ntrain:\n  lr: 0.05\n")
    result = _invoke("config", "show", str(recipe), "epochs=3", "lm.train_files=a.jsonl", "--task", "lm")
    shown = yaml.safe_load(result.stdout)
    assert shown["run"] == {"name": "mine", "dir": "runs", "task": "lm"}
    assert shown["train"]["lr"] == 0.05 and shown["train"]["epochs"] == 3
    assert shown["model"]["name"] == "llama"  # the lm task's default, filled in
    assert shown["train"]["monitor"] == "val_loss"
    assert shown["lm"]["train_files"] == ["a.jsonl"]
    assert "epochs=3 -> train.epochs=3" in result.stderr
    assert re.search(r"^distill:\s+# not read by this task", result.stdout, re.M)


def test_config_show_warns_of_what_train_would_refuse_and_still_shows_it(tmp_path: Path):
    """dpo.beta on a classify run: train refuses it (a key its task does not read would do nothing);
    show names it in train's own words, as a warning, and shows the config with exit code 0."""
    import modelcycle

    with pytest.raises(ConfigError) as refused:
        modelcycle.train(load_config(None, ["dpo.beta=0.2", f"run.dir={tmp_path}"]), progress=False)
    assert not any(tmp_path.iterdir())  # refused before any work
    result = _invoke("config", "show", "dpo.beta=0.2")
    assert_mentions(result.stderr, f"warning: train and tune would refuse this config: {refused.value}")
    assert "dpo.beta=0.2: run.task=classify does not read it" in str(refused.value)
    assert yaml.safe_load(result.stdout)["dpo"]["beta"] == 0.2  # stdout still the whole config, a recipe
    # the same key on a task that reads it: nothing to warn of
    assert "warning" not in _invoke("config", "show", "dpo.beta=0.2", "--task", "dpo").stderr


def test_config_keys_lists_type_default_and_description():
    lines = {line.split()[0]: line for line in _invoke("config", "keys").stdout.splitlines() if line.strip()}
    assert set(lines) == dict(_fields()).keys()
    epochs = lines["train.epochs"]
    assert re.match(r"train\.epochs\s+10\s+passes over the training data\s+\(expects a whole number >= 1\)$", epochs)
    assert_mentions(lines["train.optimizer"], "adamw", "expects one of sgd, adam, adamw")
    assert_mentions(lines["lm.train_files"], "[]", "a list of texts")
    lm = {line.split()[0]: line for line in _invoke("config", "keys", "--task", "lm").stdout.splitlines() if line}
    assert lm["model.name"].split()[1] == "llama"


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("epochs=5", "train.epochs", 5),
        ("lr=0.01", "train.lr", 0.01),
        ("batch_size=8", "train.batch_size", 8),  # also eval's; the training batch is what it means
        ("r=4", "model.lora.r", 4),
        ("task=lm", "run.task", "lm"),
        ("data=datasets/digits", "data.root", "datasets/digits"),  # Ultralytics' data=DIR
        ("model=resnet18", "model.name", "resnet18"),
    ],
)
def test_a_shorthand_is_its_full_key(capsys, override, key, value):
    config = load_config(None, [override])
    section, leaf = key.rsplit(".", 1)
    node = config
    for part in section.split("."):
        node = getattr(node, part)
    assert getattr(node, leaf) == value
    short, raw = override.split("=", 1)
    assert f"{override} -> {key}={raw}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("gamma=0.5", ["'gamma' is a key of several sections", "train.gamma", "ppo.gamma", "train.gamma=0.5"]),
        ("temperature=2", ["distill.temperature", "ppo.temperature"]),
        ("monitor=val_loss", ["train.monitor=val_loss", "the section monitor", "monitor.KEY=VALUE"]),
        ("train=5", ["'train' names", "the section train", "train.KEY=VALUE", "modelcycle config keys"]),
    ],
)
def test_an_ambiguous_name_is_refused_listing_what_it_could_mean(override, fragments):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert_mentions(str(info.value), *fragments)


def test_a_bare_value_is_a_one_item_list(tmp_path: Path):
    config = load_config(None, ["lm.train_files=a.jsonl", "data.train_files=b.jsonl", "data.mean=0.5"])
    assert (config.lm.train_files, config.data.train_files, config.data.mean) == (["a.jsonl"], ["b.jsonl"], [0.5])
    assert load_config(None, ["lm.train_files=[a.jsonl, b.jsonl]"]).lm.train_files == ["a.jsonl", "b.jsonl"]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lm:\n  val_files: v.jsonl\n")
    assert load_config(recipe).lm.val_files == ["v.jsonl"]


# every shape of bad value: (override, the key named, what the message says is expected)
BAD = [
    ("data=x", None, None),  # fine: data.root (the control row)
    ("train.epochs=abc", "train.epochs", "expected a whole number >= 1"),
    ("train.epochs=2.5", "train.epochs", "expected a whole number >= 1"),
    ("train.epochs=0", "train.epochs", "expected a whole number >= 1"),
    ("train.lr=fast", "train.lr", "expected a number > 0"),
    ("train.optimizer=adm", "train.optimizer", "expected one of sgd, adam, adamw; did you mean adam?"),
    ("train.ema=perhaps", "train.ema", "expected true or false"),
    ("data.cache=maybe", "data.cache", "expected true or false or auto"),
    ("data.crop_scale=[1]", "data.crop_scale", "expected 2 numbers in brackets"),
    ("data.mean=[x]", "data.mean", "expected a list of numbers"),
    ("data.channels=x", "data.channels", "expected a whole number or null"),
    ("lm.train_files={a: 1}", "lm.train_files", "expected a list of texts"),
    ("model.args=[1]", "model.args", "expected a mapping"),
    ("model.lora=3", "model.lora", "is a section, so it takes keys"),
    ("model.freeze=x", "model.freeze", "is not a freeze mode"),
    ("run.task=a-b", "run.task", "a task name is letters"),
    ("monitor.step=0", "monitor.step", "expected a whole number >= 1 or null"),
    ("ppo.kl_target=-1", "ppo.kl_target", "expected a number > 0 or null"),
    ("train.epoch=3", "train.epoch", "did you mean 'train.epochs'"),
    ("epoch=3", "epoch", "did you mean 'train.epochs'"),
]


@pytest.mark.parametrize(("override", "key", "expected"), BAD)
def test_a_bad_value_is_reported_in_our_words(override, key, expected):
    if key is None:
        assert load_config(None, [override]).data.root == "x"
        return
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert "Input should be" not in message and "Value error" not in message, message
    assert_mentions(message, key, "(command line)", expected)


def test_a_bad_value_in_a_file_names_the_file_and_line(tmp_path: Path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  epochs: x\ndata: datasets/digits\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    message = str(info.value)
    assert "Input should be" not in message
    assert_mentions(message, f"train.epochs ({recipe}:2): got x; expected a whole number >= 1")
    assert_mentions(message, f"data ({recipe}:3) is a section", "did you mean data.root=datasets/digits?")


@pytest.mark.parametrize(
    "command",
    [["train"], ["evaluate"], ["predict"], ["serve"], ["tune"], ["lm", "sft"], ["config", "show"], ["export"]],
)
def test_help_has_no_type_tags(command):
    text = _invoke(*command, "--help").stdout
    assert not re.search(r"<(bool|str|int|float|path|list)", text), text
    usage = re.search(r"Usage: (.*)", text).group(1)
    assert "{" not in usage, usage
    arguments = usage.split("[OPTIONS]")[1].strip().replace("[", "").replace("]", "").replace(".", "")
    assert arguments.isupper() or not arguments, usage  # CONFIG [OVERRIDES]..., as click writes them


def test_shorthands_train_and_top5_says_what_it_means(tmp_path: Path, prepared: Path):
    """A real run with `data=DIR epochs=5 batch_size=8` trains 5 epochs; with 3 classes the
    top-k accuracy is named top5 everywhere and said once to be top-3."""
    full = tiny_overrides(prepared, tmp_path / "runs", name="short")
    rest = [o for o in full if o.split("=")[0] not in ("data.root", "train.epochs", "train.batch_size")]
    result = run_cli("train", f"data={prepared}", "epochs=5", "batch_size=8", *rest)
    assert result.returncode == 0, result.stderr
    assert_mentions(result.stderr, "epochs=5 -> train.epochs=5", f"data={prepared} -> data.root={prepared}")
    assert_mentions(result.stderr, "val_top5 is top-3 accuracy here: 3 classes, fewer than 5")
    run = tmp_path / "runs" / "short"
    epochs = [row["epoch"] for row in read_jsonl(run / "metrics.jsonl") if "val_loss" in row]
    assert epochs == [1, 2, 3, 4, 5]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 5

    shown = run_cli("evaluate", run)
    assert shown.returncode == 0, shown.stderr
    assert_mentions(shown.stderr, "top5 (of 3 classes: top-3)")
    assert "top-3 " not in shown.stderr.replace("top-3)", "")  # one name: no bare "top-3 0.83"
    report = (run / "report" / "report.md").read_text()
    assert "| top5 (of 3 classes: top-3) |" in report and "| top5 |" not in report
    as_json = json.loads(run_cli("evaluate", run, "--json").stdout)
    assert as_json["topk"] == 3 and "top5" in as_json


def test_an_ambiguous_name_on_the_command_line_exits_2():
    assert_user_error(run_cli("config", "show", "seed=1", "gamma=0.5"), "train.gamma", "ppo.gamma")


@pytest.mark.parametrize(
    ("k", "classes", "label"),
    [(5, 10, "top5"), (4, 4, "top5 (of 4 classes: top-4)"), (3, 10, "top5 (eval.topk=3: top-3)")],
)
def test_top5_says_what_it_means_when_k_is_not_5(k, classes, label):
    assert top5_label(k, classes) == label
