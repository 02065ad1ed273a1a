"""The project's own vision networks (torchvision does not load with the CPU wheel here).

Every builder takes ``in_channels``, ``num_classes`` and ``image_size``; small inputs (64 px and
below) get a CIFAR-style stem so that early downsampling does not throw the picture away.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type = nn.ReLU) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """``features`` -> global average pool -> dropout -> linear ``head``.

    The named ``head`` is what fine-tuning replaces when the class count changes.
    """

    def __init__(self, features: nn.Module, width: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


def simple_cnn(in_channels: int, num_classes: int, image_size: int, width: int = 32, dropout: float = 0.2) -> nn.Module:
    """The classic tutorial net: conv-BN-ReLU blocks, each pair followed by 2x2 max-pooling."""
    blocks, cin = [], in_channels
    stages = max(1, min(4, (image_size // 4).bit_length() - 1))  # stop pooling at about 4x4
    for i in range(stages):
        cout = width * 2**i
        blocks += [conv_bn(cin, cout), conv_bn(cout, cout), nn.MaxPool2d(2)]
        cin = cout
    return Classifier(nn.Sequential(*blocks), cin, num_classes, dropout)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, width, 3, stride), conv_bn(width, width, act=None))
        self.shortcut = _shortcut(cin, width, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            conv_bn(cin, width, 1), conv_bn(width, width, 3, stride), conv_bn(width, cout, 1, act=None)
        )
        self.shortcut = _shortcut(cin, cout, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    return nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, 1, stride, act=None)


def _stem(in_channels: int, image_size: int, width: int) -> nn.Sequential:
    if image_size <= 64:
        return conv_bn(in_channels, width, 3)
    return nn.Sequential(conv_bn(in_channels, width, 7, 2), nn.MaxPool2d(3, 2, 1))


def _resnet(block, depths, in_channels, num_classes, image_size, width=64, dropout=0.0) -> nn.Module:
    layers, cin = [_stem(in_channels, image_size, width)], width
    for stage, depth in enumerate(depths):
        planes = width * 2**stage
        for i in range(depth):
            layers.append(block(cin, planes, 2 if i == 0 and stage > 0 else 1))
            cin = planes * block.expansion
    model = Classifier(nn.Sequential(*layers), cin, num_classes, dropout)
    for m in model.modules():  # residual branches start as identity: steadier early training
        if isinstance(m, BasicBlock | Bottleneck):
            nn.init.zeros_(m.body[-1][1].weight)
    return model


def resnet18(in_channels: int, num_classes: int, image_size: int, **kw) -> nn.Module:
    return _resnet(BasicBlock, (2, 2, 2, 2), in_channels, num_classes, image_size, **kw)


def resnet34(in_channels: int, num_classes: int, image_size: int, **kw) -> nn.Module:
    return _resnet(BasicBlock, (3, 4, 6, 3), in_channels, num_classes, image_size, **kw)


def resnet50(in_channels: int, num_classes: int, image_size: int, **kw) -> nn.Module:
    return _resnet(Bottleneck, (3, 4, 6, 3), in_channels, num_classes, image_size, **kw)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [conv_bn(cin, hidden, 1, act=nn.ReLU6)]
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6), conv_bn(hidden, cout, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2(
    in_channels: int, num_classes: int, image_size: int, width_mult: float = 1.0, dropout: float = 0.2
) -> nn.Module:
    """MobileNetV2 (Sandler et al. 2018); the first two strides are dropped for small inputs."""
    settings = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
    small = image_size <= 64
    cin = _round8(32 * width_mult)
    layers = [conv_bn(in_channels, cin, 3, 1 if small else 2, act=nn.ReLU6)]
    for i, (t, c, n, s) in enumerate(settings):
        cout = _round8(c * width_mult)
        for j in range(n):
            stride = s if j == 0 and not (small and i == 1) else 1
            layers.append(InvertedResidual(cin, cout, stride, t))
            cin = cout
    last = _round8(1280 * max(1.0, width_mult))
    layers.append(conv_bn(cin, last, 1, act=nn.ReLU6))
    return Classifier(nn.Sequential(*layers), last, num_classes, dropout)


def _round8(x: float) -> int:
    return max(8, int(x + 4) // 8 * 8)


class ViT(nn.Module):
    """A small Vision Transformer: patch embedding, class token, pre-norm encoder blocks."""

    def __init__(
        self, in_channels, num_classes, image_size, patch=None, dim=192, depth=12, heads=3, mlp=4.0, dropout=0.0
    ):
        super().__init__()
        patch = patch or max(2, image_size // 8)  # an 8x8 grid of patches by default
        if image_size % patch:
            raise ValueError(f"vit_tiny: image_size {image_size} is not a multiple of patch {patch}")
        self.embed = nn.Conv2d(in_channels, dim, patch, patch)
        tokens = (image_size // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, int(dim * mlp), dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.encoder(x)[:, 0]))


def vit_tiny(in_channels: int, num_classes: int, image_size: int, **kw) -> nn.Module:
    return ViT(in_channels, num_classes, image_size, **kw)
