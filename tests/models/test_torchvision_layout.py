"""Our resnet18/34/50 and mobilenet_v2 against torchvision's own definitions: a state_dict saved
from torchvision's model, in a file named like torchvision's ImageNet files, loads strictly through
``model.weights`` and gives the same logits; and a training run starts from such a file.

torchvision cannot be installed next to this CPU torch (its compiled ops do not load, and
transformers then fails to import its image processors), so `make venv` keeps its wheel in
``<venv>/wheels`` and a subprocess imports the wheel's pure-Python model files from the zip with
stub packages: this pytest process never sees a half torchvision in sys.modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import modelcycle
from helpers import make_image_folder, tiny_overrides
from modelcycle.config import load_config
from modelcycle.models import pretrained
from modelcycle.models.registry import build_model

# torchvision's ImageNet file names (IMAGENET1K_V1); the files here hold torchvision models' weights
FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
}
SIZE = 128  # input side for the logits comparison: the ImageNet stem at a size that runs quickly

TORCHVISION = r"""
import importlib, sys, types
import torch

wheel, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = dict(arg.split("=") for arg in sys.argv[4:])
for name, sub in [("torchvision", ""), ("torchvision.models", "/models"), ("torchvision.transforms", "/transforms")]:
    module = types.ModuleType(name)
    module.__path__ = [f"{wheel}/torchvision{sub}"]
    sys.modules[name] = module
functional = importlib.import_module("torchvision.transforms.functional")
sys.modules["torchvision.transforms"].InterpolationMode = functional.InterpolationMode
resnet = importlib.import_module("torchvision.models.resnet")
mobilenetv2 = importlib.import_module("torchvision.models.mobilenetv2")
builders = {"resnet18": resnet.resnet18, "resnet34": resnet.resnet34, "resnet50": resnet.resnet50,
            "mobilenet_v2": mobilenetv2.mobilenet_v2}
torch.manual_seed(0)
images = torch.randn(2, 3, size, size)
for name, file in files.items():
    model = builders[name]().eval()
    with torch.no_grad():  # trained-looking BatchNorms: random statistics and scales, so every layer matters
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
        logits = model(images)
    torch.save(model.state_dict(), f"{out}/{file}")
    torch.save({"images": images, "logits": logits}, f"{out}/{name}.logits.pt")
print(type(model).__module__)
"""


def torchvision_wheel() -> Path:
    wheels = sorted((Path(sys.prefix) / "wheels").glob("torchvision-*.whl"))
    if not wheels:
        pytest.fail(
            f"torchvision's wheel is not in {Path(sys.prefix) / 'wheels'}: run `make venv`, which downloads it "
            "(it is kept, not installed) for this test"
        )
    return wheels[-1]


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory) -> Path:
    """torchvision's four models' weights and logits, written by torchvision's own code."""
    out = tmp_path_factory.mktemp("torchvision")
    files = [f"{name}={file}" for name, file in FILES.items()]
    script = [sys.executable, "-c", TORCHVISION, str(torchvision_wheel()), str(out), str(SIZE), *files]
    done = subprocess.run(script, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "torchvision.models.mobilenetv2"  # the wheel's code built them, not ours
    return out


@pytest.mark.parametrize("name", sorted(FILES))
def test_torchvision_weights_load_strictly_and_give_the_same_logits(torchvision_files: Path, name: str):
    config = load_config(None, [f"model.name={name}", f"model.weights={torchvision_files / FILES[name]}"])
    args = pretrained.builder_args(config)
    assert args == {"stem": "imagenet"}  # model.weights: the stem the file was trained with
    model = build_model(name, 3, 1000, 224, args)
    classes = [f"n{i:04d}" for i in range(1000)]
    pre = {"channels": 3, "image_size": 224, "mean": pretrained.IMAGENET_MEAN, "std": pretrained.IMAGENET_STD}
    record = pretrained.load_weights(config, model, classes, pre)
    state = torch.load(torchvision_files / FILES[name], weights_only=True)
    assert record["loaded"] == record["tensors"] == len(state) and record["replaced"] == [] and not record["adapted"]
    assert record["notes"] == [
        "the file's head has 1000 rows, as many as this run's classes: loaded as it is, so this run's class i "
        "takes the file's class i (classes in sorted folder order)"
    ]
    reference = torch.load(torchvision_files / f"{name}.logits.pt", weights_only=True)
    with torch.no_grad():
        logits = model.eval()(reference["images"])
    torch.testing.assert_close(logits, reference["logits"], rtol=1e-4, atol=1e-4)


def test_a_run_starts_from_a_torchvision_file(torchvision_files: Path, tmp_path: Path):
    """resnet18 on a tiny 3-class folder at 64 px: the head is replaced, everything else loads, and
    with the backbone frozen it is still the file's, bit for bit, in the run's package."""
    data = tmp_path / "data"
    modelcycle.prepare(make_image_folder(tmp_path / "images", size=64, per_class=6), data, val=0.34, seed=0)
    file = torchvision_files / FILES["resnet18"]
    overrides = tiny_overrides(data, tmp_path / "runs", name="from-imagenet", train__epochs=1, data__image_size=64)
    overrides += ["model.name=resnet18", "model.args={}", f"model.weights={file}", "model.freeze=backbone"]
    run = modelcycle.train(load_config(None, overrides), progress=False)
    package = run.path / "model"
    manifest = json.loads((package / "modelcycle.json").read_text())
    assert manifest["architecture"]["args"] == {"stem": "imagenet"}
    record = manifest["pretrained"]
    assert record["file"] == str(file.resolve()) and record["file_classes"] == 1000
    assert record["replaced"] == ["fc.weight", "fc.bias"] and record["loaded"] == record["tensors"] - 2
    events = (run.path / "events.log").read_text()
    assert "model.weights: 120 of 122 tensors loaded from" in events and "head replaced (fc.weight, fc.bias)" in events
    trained = load_file(package / "model.safetensors")
    source = torch.load(file, weights_only=True)
    assert trained["fc.weight"].shape == (3, 512)
    assert all(torch.equal(trained[k], v) for k, v in source.items() if not k.startswith("fc."))
    assert len(run.epoch_metrics()) == 1
