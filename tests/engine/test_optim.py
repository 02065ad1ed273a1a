"""The engine's optimizer: which parameters get weight decay, the fused kernels, and a checkpoint
whose parameter groups do not fit."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

from modelcycle.config import TrainSection
from modelcycle.engine.optim import build_optimizer, check_groups, param_groups
from modelcycle.errors import CheckpointError
from modelcycle.models.registry import build_model


def _decayed(model: nn.Module, optimizer: torch.optim.Optimizer) -> set[str]:
    """Names of the parameters in a group with weight decay."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}


def _norm_and_bias(model: nn.Module, norms: tuple[type, ...]) -> set[str]:
    """What timm and the HF Trainer leave undecayed, found from module types, not from our rule."""
    out = set()
    for prefix, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            if isinstance(module, norms) or "bias" in name:  # in_proj_bias too
                out.add(f"{prefix}.{name}" if prefix else name)
    return out


def test_a_cnn_decays_its_kernels_and_not_its_biases_or_batchnorm():
    model = build_model("resnet18", num_classes=5, in_channels=3, image_size=32)
    optimizer = build_optimizer(model, TrainSection(weight_decay=0.05))
    undecayed = _norm_and_bias(model, (nn.BatchNorm2d,))
    assert any(".bn" in n or "bn1" in n for n in undecayed), undecayed  # the model has BatchNorm to skip
    assert _decayed(model, optimizer) == {n for n, _ in model.named_parameters()} - undecayed
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]


def test_a_vit_skips_layernorm_and_biases_but_decays_its_position_embedding():
    model = build_model("vit_tiny", num_classes=3, in_channels=3, image_size=32)
    optimizer = build_optimizer(model, TrainSection(weight_decay=0.05))
    decayed = _decayed(model, optimizer)
    assert decayed == {n for n, _ in model.named_parameters()} - _norm_and_bias(model, (nn.LayerNorm,))
    assert any(isinstance(m, nn.LayerNorm) for m in model.modules())
    two_d_plus = {n for n, p in model.named_parameters() if p.ndim > 1}
    assert two_d_plus <= decayed  # kernels, the patch projection, position embedding and class token


def test_a_hugging_face_text_model_gets_the_hf_trainers_decay_set():
    from transformers import BertConfig, BertForSequenceClassification, Trainer

    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3
    )
    model = BertForSequenceClassification(config)
    optimizer = build_optimizer(model, TrainSection(weight_decay=0.01))
    # the Trainer's own rule (it reads nothing of the Trainer instance)
    assert _decayed(model, optimizer) == set(Trainer.get_decay_parameter_names(None, model))


def test_the_switch_decays_every_parameter_as_before():
    model = build_model("simple_cnn", num_classes=3, in_channels=1, image_size=16)
    optimizer = build_optimizer(model, TrainSection(weight_decay=0.05, decay_norm_and_bias=True))
    assert len(optimizer.param_groups) == 1
    assert _decayed(model, optimizer) == {n for n, _ in model.named_parameters()}


def test_without_weight_decay_there_is_one_group_as_before():
    model = build_model("simple_cnn", num_classes=3, in_channels=1, image_size=16)
    assert len(param_groups(model, TrainSection(weight_decay=0.0))) == 1


def test_the_head_keeps_its_learning_rate_in_both_of_its_groups():
    model = build_model("simple_cnn", num_classes=3, in_channels=1, image_size=16)
    cfg = TrainSection(lr=0.01, weight_decay=0.05, head_lr_mult=10)
    groups = build_optimizer(model, cfg).param_groups
    head = {id(p) for p in model.head.parameters()}
    # group 0, whose lr is logged, is the body's decayed kernels
    assert not any(id(p) in head for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.05
    for group in groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) == 1
        assert group["lr"] == pytest.approx(0.1 if in_head == {True} else 0.01)
    assert sorted((g["lr"], g["weight_decay"]) for g in groups) == [(0.01, 0.0), (0.01, 0.05), (0.1, 0.0), (0.1, 0.05)]


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_the_fused_kernel_is_chosen_and_matches_the_for_loop(name):
    torch.manual_seed(0)
    model = build_model("simple_cnn", num_classes=4, in_channels=1, image_size=16)
    reference, start = copy.deepcopy(model), copy.deepcopy(model)
    cfg = TrainSection(optimizer=name, lr=0.01, weight_decay=0.05, momentum=0.9)
    fused = build_optimizer(model, cfg)
    assert fused.defaults["fused"] is True
    # the same groups, stepped by torch's for-loop implementation
    accepts = inspect.signature(type(fused)).parameters
    settings = {k: v for k, v in fused.defaults.items() if k in accepts}
    loop = type(fused)(param_groups(reference, cfg), **{**settings, "fused": False, "foreach": False})
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 4, (16,))
    for step in range(5):
        for m, opt in ((model, fused), (reference, loop)):
            torch.manual_seed(step)  # the same dropout masks on both sides
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for (name_a, a), (_, b) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name_a)
    moved = max((a - b).abs().max().item() for a, b in zip(model.parameters(), start.parameters(), strict=True))
    assert moved > 1e-3  # the steps did something, so the agreement above means something


def test_a_checkpoint_with_the_old_group_layout_is_refused_with_the_switch_named():
    model = build_model("simple_cnn", num_classes=3, in_channels=1, image_size=16)
    old = build_optimizer(model, TrainSection(weight_decay=0.05, decay_norm_and_bias=True)).state_dict()
    new = build_optimizer(model, TrainSection(weight_decay=0.05))
    with pytest.raises(CheckpointError, match=r"last\.pt.*train\.decay_norm_and_bias=true"):
        check_groups(new, old, "runs/x/checkpoints/last.pt")
    # with the switch the layout is the old one again, and the state loads
    again = build_optimizer(model, TrainSection(weight_decay=0.05, decay_norm_and_bias=True))
    check_groups(again, old, "last.pt")
    again.load_state_dict(old)


def test_resuming_a_run_of_the_old_layout_says_which_switch_resumes_it(tiny_config):
    import modelcycle

    old = tiny_config("train.weight_decay=0.01", "train.decay_norm_and_bias=true", train__epochs=1)
    modelcycle.train(old, progress=False)
    more = tiny_config("train.weight_decay=0.01", train__epochs=2)
    with pytest.raises(CheckpointError, match=r"checkpoints/last\.pt.*train\.decay_norm_and_bias=true"):
        modelcycle.train(more, resume=True, progress=False)
    again = tiny_config("train.weight_decay=0.01", "train.decay_norm_and_bias=true", train__epochs=2)
    run = modelcycle.train(again, resume=True, progress=False)
    assert "resumed from step=" in (run.path / "events.log").read_text()
