"""``model.weights``: what loads and what starts fresh (head, the small stem's conv1, grey input),
and files that do not fit: the wrong architecture, modelcycle's previous layout, not a state_dict.
The files are saved from our own builders, whose layout test_torchvision_layout.py proves is
torchvision's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from helpers import tiny_overrides
from modelcycle import runs
from modelcycle.config import load_config
from modelcycle.errors import ConfigError, UserError
from modelcycle.models import pretrained
from modelcycle.models.registry import build_model
from modelcycle.packages import load_model
from modelcycle.tasks import registry

CLASSES = ["cat", "dog", "fox"]
# modelcycle 0.1.0's ResNet keys (blocks under features.N.body, a head), a few of each kind
PREVIOUS_LAYOUT = {
    "features.0.0.weight": (64, 3, 3, 3),
    "features.0.1.weight": (64,),
    "features.1.body.0.0.weight": (64, 64, 3, 3),
    "features.1.body.1.1.running_mean": (64,),
    "head.weight": (3, 512),
    "head.bias": (3,),
}


def imagenet_file(tmp_path: Path, name: str, file: str) -> Path:
    """A file shaped like torchvision's ImageNet one: the ImageNet stem, 1000 classes, 3 channels."""
    torch.manual_seed(1)
    model = build_model(name, 3, 1000, 224, {"stem": "imagenet"})
    with torch.no_grad():  # trained-looking statistics, unlike a fresh BatchNorm's
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / file
    torch.save(model.state_dict(), path)
    return path


def load(tmp_path: Path, file: Path, name: str, channels: int = 3, size: int = 224, **args) -> tuple:
    config = load_config(None, [f"model.name={name}", f"model.weights={file}", f"model.args={json.dumps(args)}"])
    model = build_model(name, channels, len(CLASSES), size, pretrained.builder_args(config))
    mean, std = ([0.5], [0.5]) if channels == 1 else (pretrained.IMAGENET_MEAN, pretrained.IMAGENET_STD)
    pre = {"channels": channels, "image_size": size, "mean": mean, "std": std}
    return model, pretrained.load_weights(config, model, CLASSES, pre)


def test_other_classes_replace_the_head_and_everything_else_loads(tmp_path: Path):
    file = imagenet_file(tmp_path, "resnet18", "resnet18-f37072fd.pth")
    model, record = load(tmp_path, file, "resnet18")
    source = torch.load(file, weights_only=True)
    assert record["replaced"] == ["fc.weight", "fc.bias"] and record["loaded"] == len(source) - 2
    assert model.fc.weight.shape == (3, 512)
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items() if not k.startswith("fc."))
    lines = "\n".join(pretrained.describe(record))
    assert "120 of 122 tensors loaded" in lines and "the file has 1000 classes and names none" in lines


def test_the_small_stem_loads_all_but_conv1_and_bn1_with_a_note(tmp_path: Path):
    file = imagenet_file(tmp_path, "resnet18", "resnet18-f37072fd.pth")
    model, record = load(tmp_path, file, "resnet18", size=32, stem="small")
    assert model.conv1.weight.shape == (64, 3, 3, 3) and isinstance(model.maxpool, torch.nn.Identity)
    bn1 = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    assert record["fresh"] == ["conv1.weight"] + [f"bn1.{b}" for b in bn1]
    source = torch.load(file, weights_only=True)
    kept = [k for k in source if not k.startswith(("conv1.", "bn1.", "fc."))]
    assert all(torch.equal(model.state_dict()[k], source[k]) for k in kept) and record["loaded"] == len(kept)
    assert not torch.equal(model.bn1.running_var, source["bn1.running_var"])
    assert any("stem=small: bn1, conv1 start fresh" in n and "model.args.stem=imagenet" in n for n in record["notes"])


def test_mobilenet_small_stem_only_drops_strides_so_everything_loads(tmp_path: Path):
    file = imagenet_file(tmp_path, "mobilenet_v2", "mobilenet_v2-b0353104.pth")
    model, record = load(tmp_path, file, "mobilenet_v2", size=32, stem="small")
    assert record["fresh"] == [] and record["replaced"] == ["classifier.1.weight", "classifier.1.bias"]
    assert model.features[0][0].stride == (1, 1) and model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_grey_runs_sum_the_files_rgb_stem_and_are_told_imagenets_grey_statistics(tmp_path: Path):
    file = imagenet_file(tmp_path, "resnet18", "resnet18-f37072fd.pth")
    model, record = load(tmp_path, file, "resnet18", channels=1, size=64)
    source = torch.load(file, weights_only=True)
    assert torch.equal(model.conv1.weight, source["conv1.weight"].sum(1, keepdim=True))
    assert record["adapted"] == ["conv1.weight: 3 -> 1 input channels (summed over the colour channels)"]
    assert any("data.mean=[0.449] data.std=[0.226]" in n for n in record["notes"])
    assert any("image_size 64: torchvision's ImageNet files were trained on 224 px" in n for n in record["notes"])


def test_another_architectures_file_is_refused_with_the_tensors_and_the_right_name(tmp_path: Path):
    file = imagenet_file(tmp_path, "resnet34", "resnet34-b627a593.pth")
    with pytest.raises(ConfigError) as error:
        load(tmp_path, file, "resnet18")
    text = str(error.value)
    assert f"model.weights: {file} does not fit this run's model (model.name=resnet18" in text
    assert "in the source but not in this run's model" in text and "layer1.2.conv1.weight" in text
    assert "The file has the names and shapes of torchvision's resnet34: set model.name=resnet34" in text


def test_previous_layout_is_refused_clearly_from_a_file_and_from_a_package(tmp_path: Path):
    state = {k: torch.zeros(shape) for k, shape in PREVIOUS_LAYOUT.items()}
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(ConfigError, match=r"previous ResNet/MobileNetV2 layout .* Retrain the source"):
        load(tmp_path, tmp_path / "old.pt", "resnet18")

    spec = {"name": "resnet18", "args": {}, "in_channels": 3, "num_classes": 3, "image_size": 32}
    pre = {"image_size": 32, "channels": 3, "mean": pretrained.IMAGENET_MEAN, "std": pretrained.IMAGENET_STD}
    manifest = {"task": "classify", "backend": "torch", "architecture": spec, "classes": CLASSES, "preprocessing": pre}
    runs.write_package(tmp_path / "model", state, manifest)
    with pytest.raises(UserError) as error:
        load_model(tmp_path / "model")
    assert "ResNet in modelcycle's previous layout" in str(error.value)
    assert "Retrain the run with this version, or use modelcycle 0.1.0" in str(error.value)


def test_files_that_are_not_a_state_dict_are_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist; give a checkpoint file of plain tensors"):
        load(tmp_path, tmp_path / "missing.pth", "resnet18")
    torch.save({"model": {"w": torch.zeros(1)}, "step": 3}, tmp_path / "last.pt")
    with pytest.raises(ConfigError, match=r"holds a dict with keys model, step, not a state_dict .*model.init_from"):
        load(tmp_path, tmp_path / "last.pt", "resnet18")
    torch.save({"w": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a pickled module: weights_only refuses it
    with pytest.raises(
        ConfigError, match=r"holds pickled Python objects besides tensors, which torch.load\(weights_only"
    ):
        load(tmp_path, tmp_path / "pickled.pt", "resnet18")


def test_weights_and_init_from_together_are_refused(tmp_path: Path, prepared: Path):
    import modelcycle

    overrides = tiny_overrides(prepared, tmp_path / "runs", model__name="resnet18", model__args="{}")
    overrides += [f"model.weights={tmp_path / 'a.pth'}", f"model.init_from={tmp_path}"]
    with pytest.raises(ConfigError, match="both say where the weights start; keep one"):
        modelcycle.train(load_config(None, overrides), progress=False)


def test_stem_is_checked():
    with pytest.raises(ConfigError, match="stem='big': choose one of auto, small, imagenet"):
        build_model("resnet18", 3, 3, 32, {"stem": "big"})
    assert isinstance(build_model("resnet18", 3, 3, 65).maxpool, torch.nn.MaxPool2d)  # auto: over 64 px
    assert isinstance(build_model("resnet18", 3, 3, 64).maxpool, torch.nn.Identity)


@pytest.mark.parametrize("task", ["lm", "sft", "text_classify", "reward", "dpo", "ppo"])
def test_text_tasks_refuse_model_weights_instead_of_ignoring_it(task: str):
    config = registry.apply_defaults(load_config(None, [f"run.task={task}", "model.weights=resnet18-f37072fd.pth"]))
    with pytest.raises(ConfigError) as error:
        registry.check_reads(config)
    text = str(error.value)
    assert f"model.weights=resnet18-f37072fd.pth: run.task={task} does not read it" in text
    # tasks other tests register may read the whole model section too
    assert re.search(r"\(run\.task=classify or distill( or \w+)* reads model\.weights\)", text), text
