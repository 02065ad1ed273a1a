"""The project's vision networks. torchvision itself does not load with the CPU wheel here, so
ResNet and MobileNetV2 are written out with torchvision's module names and forward pass: its
ImageNet checkpoint files load into them as they are (``model.weights``, models/pretrained.py).

Every builder takes ``in_channels``, ``num_classes`` and ``image_size``; small inputs (64 px and
below) get a CIFAR-style stem by default so that early downsampling does not throw the picture away.
"""

from __future__ import annotations

import torch
from torch import nn

from modelcycle.errors import UserError


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type = nn.ReLU) -> nn.Sequential:
    """Conv, BatchNorm, activation: keys ``N.0.weight`` and ``N.1.*``, torchvision's Conv2dNormActivation."""
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), act(inplace=True))


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


# ---------------------------------------------------------------- ResNet and MobileNetV2, torchvision's layout
# Module names, shapes and forward pass are torchvision's (tests/models/test_torchvision_layout.py
# checks them against its own definitions), so its ImageNet files load as they are (model.weights).

STEMS = ("auto", "small", "imagenet")
SMALL_INPUT = 64  # stem=auto: at this size and below, the small stem


def resolve_stem(stem: str, image_size: int) -> str:
    """``small``: a CIFAR-style stem that keeps the resolution of tiny images (ResNet: a 3x3
    stride-1 conv1 and no max-pool; MobileNetV2: the first two strides dropped); ``imagenet``:
    torchvision's stem for 224 px images; ``auto``: small up to 64 px."""
    if stem not in STEMS:
        raise ValueError(f"stem={stem!r}: choose one of {', '.join(STEMS)}")
    return stem if stem != "auto" else ("small" if image_size <= SMALL_INPUT else "imagenet")


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5: the stride sits on the 3x3 convolution, as in torchvision."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * 4, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """conv1/bn1/relu/maxpool -> layer1..layer4 -> avgpool -> (dropout) -> fc, as torchvision's."""

    def __init__(self, block, depths, in_channels, num_classes, image_size, stem="auto", width=64, dropout=0.0):
        super().__init__()
        small = resolve_stem(stem, image_size) == "small"
        self.conv1 = _conv(in_channels, width, 3) if small else _conv(in_channels, width, 7, 2)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)
        inplanes = width
        for stage, depth in enumerate(depths):
            planes, stride = width * 2**stage, 1 if stage == 0 else 2
            out = planes * block.expansion
            down = None
            if stride != 1 or inplanes != out:
                down = nn.Sequential(_conv(inplanes, out, 1, stride), nn.BatchNorm2d(out))
            blocks = [block(inplanes, planes, stride, down)] + [block(out, planes) for _ in range(depth - 1)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            inplanes = out
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)  # no parameters: the state_dict stays torchvision's
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, BasicBlock | Bottleneck):  # residual branches start as identity: steadier early training
                nn.init.zeros_((m.bn2 if isinstance(m, BasicBlock) else m.bn3).weight)
        self.register_load_state_dict_pre_hook(refuse_previous_layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


def resnet18(in_channels: int, num_classes: int, image_size: int, stem="auto", width=64, dropout=0.0) -> nn.Module:
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, num_classes, image_size, stem, width, dropout)


def resnet34(in_channels: int, num_classes: int, image_size: int, stem="auto", width=64, dropout=0.0) -> nn.Module:
    return ResNet(BasicBlock, (3, 4, 6, 3), in_channels, num_classes, image_size, stem, width, dropout)


def resnet50(in_channels: int, num_classes: int, image_size: int, stem="auto", width=64, dropout=0.0) -> nn.Module:
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, num_classes, image_size, stem, width, dropout)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = int(round(cin * expand))
        layers = [] if expand == 1 else [conv_bn(cin, hidden, 1, act=nn.ReLU6)]
        layers += [
            conv_bn(hidden, hidden, 3, stride, hidden, nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018): ``features`` -> average pool -> ``classifier``
    (dropout, linear), as torchvision's. The small stem drops the strides of ``features.0`` and of
    the first 24-channel block; the weights' shapes do not depend on the stem."""

    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, in_channels, num_classes, image_size, stem="auto", width_mult=1.0, dropout=0.2):
        super().__init__()
        small = resolve_stem(stem, image_size) == "small"
        cin = _make_divisible(32 * width_mult)
        layers: list[nn.Module] = [conv_bn(in_channels, cin, 3, 1 if small else 2, act=nn.ReLU6)]
        for i, (t, c, n, s) in enumerate(self.SETTINGS):
            cout = _make_divisible(c * width_mult)
            for j in range(n):
                stride = s if j == 0 and not (small and i == 1) else 1
                layers.append(InvertedResidual(cin, cout, stride, t))
                cin = cout
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers.append(conv_bn(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        self.register_load_state_dict_pre_hook(refuse_previous_layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_v2(
    in_channels: int, num_classes: int, image_size: int, stem="auto", width_mult: float = 1.0, dropout: float = 0.2
) -> nn.Module:
    return MobileNetV2(in_channels, num_classes, image_size, stem, width_mult, dropout)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Channels rounded to a multiple of 8, never more than 10 % down (torchvision's rule)."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


PREVIOUS_VERSION = "modelcycle 0.1.0 at commit 70ec667 or earlier"  # the last with the previous layout


def previous_layout(keys) -> bool:
    """Weights of this project's ResNets / MobileNetV2 before they took torchvision's names
    (``features.N.body...`` blocks and a ``head``)."""
    keys = list(keys)
    return "head.weight" in keys and any(k.startswith("features.") and ".body." in k for k in keys)


def refuse_previous_layout(module: nn.Module, state_dict: dict, prefix: str, *_) -> None:
    """A load_state_dict pre-hook: an old package or checkpoint gets a clear error, not a list of
    a hundred missing keys."""
    if previous_layout(k[len(prefix) :] for k in state_dict if k.startswith(prefix)):
        raise UserError(
            f"these weights are a {type(module).__name__} in modelcycle's previous layout (blocks under "
            "features.N.body, a `head`): resnet18/34/50 and mobilenet_v2 now use torchvision's module names "
            "(conv1, layer1..4, fc / features, classifier), so they no longer load as that architecture. "
            f"Retrain the run with this version, or use {PREVIOUS_VERSION} to load it"
        )


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
