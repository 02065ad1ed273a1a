"""Freeze modes: which parameters train, and frozen BatchNorms keep their statistics."""

import pytest
import torch
from torch import nn

from modelcycle.config import load_config
from modelcycle.errors import ConfigError
from modelcycle.models.freeze import apply_freeze, parse_freeze, trunk, unfreeze
from modelcycle.models.registry import build_model


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_backbone_trains_only_the_head():
    model = build_model("simple_cnn", 1, 10, 16)
    report = apply_freeze(model, "backbone")
    assert trainable(model) == {"head.weight", "head.bias"}
    assert report.trainable == 10 * model.head.in_features + 10
    assert report.frozen_modules == ["features"]


def test_all_but_last_trains_the_last_blocks_and_what_follows_the_trunk():
    model = build_model("resnet18", 1, 10, 16)
    name, blocks = trunk(model)  # torchvision's layout: the stages layer1..layer4 together
    assert name == "layer1..layer4" and blocks == [f"layer{s}.{b}" for s in (1, 2, 3, 4) for b in (0, 1)]
    apply_freeze(model, "all_but_last:3")
    names = trainable(model)
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in names if n.startswith("layer")} == {
        "layer3.1",
        "layer4.0",
        "layer4.1",
    }
    assert {"fc.weight", "fc.bias"} <= names and not any(n.startswith(("conv1", "bn1", "layer1")) for n in names)


def test_mobilenet_trunk_is_its_features_and_its_head_the_classifier():
    model = build_model("mobilenet_v2", 3, 4, 32)
    name, blocks = trunk(model)
    assert name == "features" and len(blocks) == 19  # stem conv, 17 inverted residuals, last 1x1 conv
    apply_freeze(model, "backbone")
    assert trainable(model) == {"classifier.1.weight", "classifier.1.bias"}


def test_frozen_batchnorm_keeps_its_running_statistics_until_unfrozen():
    torch.manual_seed(0)
    model = build_model("simple_cnn", 1, 10, 16)
    apply_freeze(model, "backbone")
    bn = model.features[0][1]
    before = bn.running_mean.clone()
    model.train()
    model(torch.randn(8, 1, 16, 16))
    assert torch.equal(bn.running_mean, before)
    report = unfreeze(model)
    assert report.trainable == report.total
    model.train()
    model(torch.randn(8, 1, 16, 16))
    assert not torch.equal(bn.running_mean, before)


@pytest.mark.parametrize("bad", ["backbones", "all_but_last:0", "all_but_last:x", "last:2"])
def test_a_bad_mode_is_a_config_error_that_names_the_choices(bad):
    with pytest.raises(ConfigError, match="none, backbone or all_but_last:N"):
        parse_freeze(bad)
    with pytest.raises(ConfigError, match=r"model.freeze \(command line\)"):
        load_config(None, [f"model.freeze={bad}"])


def test_more_blocks_than_the_trunk_has_is_refused():
    model = build_model("simple_cnn", 1, 10, 16)
    with pytest.raises(ConfigError, match="has only"):
        apply_freeze(model, "all_but_last:99")


def test_a_model_without_a_head_is_refused_with_the_names_looked_for():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="Name your final layer `head`"):
        apply_freeze(model, "backbone")
