"""MobileNetV3 large and small (Howard et al. 2019) in plain torch, laid out as
``torchvision.models.mobilenetv3``: ``features.0.0`` (stem conv), ``features.N.block.M.0/1``
(conv, batch norm), ``...block.K.fc1/fc2`` (squeeze-and-excitation), ``classifier.0/3``. The
state dict has the published keys and shapes, so torchvision's ``.pth`` files load as they are.

Batch norms use torchvision's eps 0.001 and momentum 0.01: the published weights were trained
with them, and a different eps changes every output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of 8, never down by more than 10% (as torchvision)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=0.001, momentum=0.01)


class ConvNormActivation(nn.Sequential):
    """conv -> batch norm -> activation: keys ``.0.weight``, ``.1.running_mean`` as torchvision."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 activation: type[nn.Module] | None = nn.Hardswish):
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups,
                      bias=False),
            batch_norm(c_out)]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.activation = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return x * self.scale_activation(scale)


@dataclass(frozen=True)
class Bneck:
    """One inverted-residual block of the paper's tables."""

    c_in: int
    kernel: int
    expanded: int
    c_out: int
    se: bool
    hardswish: bool
    stride: int


class InvertedResidual(nn.Module):
    def __init__(self, cnf: Bneck):
        super().__init__()
        activation = nn.Hardswish if cnf.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded != cnf.c_in:
            layers.append(ConvNormActivation(cnf.c_in, cnf.expanded, 1, activation=activation))
        layers.append(ConvNormActivation(cnf.expanded, cnf.expanded, cnf.kernel, cnf.stride,
                                         groups=cnf.expanded, activation=activation))
        if cnf.se:
            layers.append(SqueezeExcitation(cnf.expanded, make_divisible(cnf.expanded // 4)))
        layers.append(ConvNormActivation(cnf.expanded, cnf.c_out, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = cnf.stride == 1 and cnf.c_in == cnf.c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


LARGE = [Bneck(16, 3, 16, 16, False, False, 1), Bneck(16, 3, 64, 24, False, False, 2),
         Bneck(24, 3, 72, 24, False, False, 1), Bneck(24, 5, 72, 40, True, False, 2),
         Bneck(40, 5, 120, 40, True, False, 1), Bneck(40, 5, 120, 40, True, False, 1),
         Bneck(40, 3, 240, 80, False, True, 2), Bneck(80, 3, 200, 80, False, True, 1),
         Bneck(80, 3, 184, 80, False, True, 1), Bneck(80, 3, 184, 80, False, True, 1),
         Bneck(80, 3, 480, 112, True, True, 1), Bneck(112, 3, 672, 112, True, True, 1),
         Bneck(112, 5, 672, 160, True, True, 2), Bneck(160, 5, 960, 160, True, True, 1),
         Bneck(160, 5, 960, 160, True, True, 1)]
SMALL = [Bneck(16, 3, 16, 16, True, False, 2), Bneck(16, 3, 72, 24, False, False, 2),
         Bneck(24, 3, 88, 24, False, False, 1), Bneck(24, 5, 96, 40, True, True, 2),
         Bneck(40, 5, 240, 40, True, True, 1), Bneck(40, 5, 240, 40, True, True, 1),
         Bneck(40, 5, 120, 48, True, True, 1), Bneck(48, 5, 144, 48, True, True, 1),
         Bneck(48, 5, 288, 96, True, True, 2), Bneck(96, 5, 576, 96, True, True, 1),
         Bneck(96, 5, 576, 96, True, True, 1)]


class MobileNetV3(nn.Module):
    """The classification network, ``classifier`` included (the published keys). The encoder
    keeps ``classifier.0`` and its hard-swish (the 1280/1024-d pre-logits features, trained on
    ImageNet too) and drops the dropout and the 1000-class layer ``classifier.3``."""

    def __init__(self, blocks: list[Bneck], last_channel: int, in_channels: int = 3,
                 num_classes: int = 1000):
        super().__init__()
        last_conv = 6 * blocks[-1].c_out
        self.features = nn.Sequential(
            ConvNormActivation(in_channels, blocks[0].c_in, 3, stride=2),
            *[InvertedResidual(cnf) for cnf in blocks],
            ConvNormActivation(blocks[-1].c_out, last_conv, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel), nn.Hardswish(inplace=True),
            nn.Dropout(p=0.2, inplace=True), nn.Linear(last_channel, num_classes))
        self.feature_dim = last_channel
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_v3_large(in_channels: int = 3) -> MobileNetV3:
    return MobileNetV3(LARGE, 1280, in_channels)


def mobilenet_v3_small(in_channels: int = 3) -> MobileNetV3:
    return MobileNetV3(SMALL, 1024, in_channels)
