"""Every registered network builds and runs; users' own models load from a file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from modelcycle.errors import ConfigError
from modelcycle.models.registry import REGISTRY, build_model, resolve_builder


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_model_builds_and_runs(name: str, channels: int):
    torch.manual_seed(0)
    model = build_model(name, channels, 7, 32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_models_train_one_step_on_a_small_input():
    # the small-input stems must not shrink 16 px to nothing
    for name in ("simple_cnn", "resnet18"):
        model = build_model(name, 3, 4, 16)
        out = model(torch.randn(3, 3, 16, 16))
        loss = nn.functional.cross_entropy(out, torch.tensor([0, 1, 2]))
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_model_args_are_passed_and_checked():
    narrow = build_model("simple_cnn", 3, 5, 32, {"width": 4})
    wide = build_model("simple_cnn", 3, 5, 32, {"width": 16})
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(narrow) < count(wide)
    with pytest.raises(ConfigError) as info:
        build_model("simple_cnn", 3, 5, 32, {"widht": 4})
    assert "widht" in str(info.value) and "width" in str(info.value)
    with pytest.raises(ConfigError, match="not a multiple"):
        build_model("vit_tiny", 3, 5, 30, {"patch": 4})


def test_unknown_name_suggests_the_close_one():
    with pytest.raises(ConfigError) as info:
        build_model("resnet19", 3, 5, 32)
    message = str(info.value)
    assert "model.name" in message and "'resnet19'" in message
    assert "did you mean 'resnet18'" in message
    assert "path/to/file.py:build" in message


def test_user_model_from_a_file(tmp_path: Path):
    path = tmp_path / "my_net.py"
    path.write_text(
        "from torch import nn\n"
        "def build(in_channels, num_classes, image_size, hidden=5):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, hidden),\n"
        "                         nn.ReLU(), nn.Linear(hidden, num_classes))\n"
        "def not_a_model(in_channels, num_classes, image_size):\n"
        "    return 42\n"
    )
    model = build_model(f"{path}:build", 1, 3, 8, {"hidden": 6})
    assert model[1].out_features == 6
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)

    with pytest.raises(ConfigError, match="has no function 'buidl'"):
        build_model(f"{path}:buidl", 1, 3, 8)
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        build_model(f"{path}:not_a_model", 1, 3, 8)
    with pytest.raises(ConfigError, match="not found"):
        resolve_builder(f"{tmp_path / 'missing.py'}:build")
