"""Encoder networks. Each maps ``[N, C, H, W]`` to L2-normalised ``[N, D]`` embeddings.

Only plain conv / batch-norm / ReLU / max-pool / linear / adaptive-average-pool / flatten layers are
used, so every architecture exports to ONNX (opset 17) and matches onnxruntime to float precision.
The standard backbones (``training.backbones``: ResNet-18/34/50, MobileNetV3) add hard-swish,
hard-sigmoid and squeeze-and-excitation, which ONNX has as operators too; they can start from
published weights (``training.weights``) and feed the same projection head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.backbones import REGISTRY as BACKBONES
from training.config import EncoderConfig
from twinstream.errors import ModelError

__all__ = ["ARCHITECTURES", "EncoderConfig", "build_encoder"]


class Embedder(nn.Module):
    """Shared tail: features -> linear projection -> unit length (so cosine = dot product)."""

    def __init__(self, features: nn.Module, feature_dim: int, embedding_dim: int):
        super().__init__()
        self.features = features
        self.project = nn.Linear(feature_dim, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(self.features(x)), dim=1)


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1,
                 padding: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def conv_stack(cfg: EncoderConfig, base: int, multipliers: tuple[int, ...]) -> Embedder:
    """Blocks of conv3x3-BN-ReLU-maxpool, then global average pooling.

    ``tiny`` and ``small`` are this; ``conv4`` (64 channels x 4 blocks) is the backbone of
    matching and prototypical networks, a strong choice for small greyscale inputs.
    """
    layers, c_in = [], cfg.in_channels
    for m in multipliers:
        layers += [*conv_bn_relu(c_in, base * m), nn.MaxPool2d(2)]
        c_in = base * m
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Embedder(nn.Sequential(*layers), c_in, cfg.embedding_dim)


def koch(cfg: EncoderConfig) -> Embedder:
    """The convolutional twin of Koch, Zemel & Salakhutdinov (2015), one branch.

    Conv 10x10 -> pool -> 7x7 -> pool -> 4x4 -> pool -> 4x4, flattened into a dense layer; batch
    norm is added after each convolution (it trains in far fewer steps). Channels 64-128-128-256
    at the default base of 64. The valid convolutions need inputs of at least 65 pixels per side
    (the paper used 105).
    """
    b = cfg.base_channels or 64
    layers = [*conv_bn_relu(cfg.in_channels, b, 10, padding=0), nn.MaxPool2d(2),
              *conv_bn_relu(b, 2 * b, 7, padding=0), nn.MaxPool2d(2),
              *conv_bn_relu(2 * b, 2 * b, 4, padding=0), nn.MaxPool2d(2),
              *conv_bn_relu(2 * b, 4 * b, 4, padding=0), nn.Flatten()]
    h, w = cfg.height, cfg.width
    for kernel, pool in ((10, 2), (7, 2), (4, 2), (4, 1)):
        h, w = (h - kernel + 1) // pool, (w - kernel + 1) // pool
    if h < 1 or w < 1:
        raise ModelError(f"the koch architecture needs inputs of at least 65x65 pixels, "
                         f"got {cfg.height}x{cfg.width}")
    return Embedder(nn.Sequential(*layers), 4 * b * h * w, cfg.embedding_dim)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut, as in ResNet-18."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn_relu(c_in, c_out, stride=stride),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def resnet(cfg: EncoderConfig) -> Embedder:
    """A small residual network: a stem and four basic blocks (three of them halve the size)."""
    b = cfg.base_channels or 16
    layers = [*conv_bn_relu(cfg.in_channels, b), BasicBlock(b, b, 1), BasicBlock(b, 2 * b, 2),
              BasicBlock(2 * b, 4 * b, 2), BasicBlock(4 * b, 8 * b, 2),
              nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Embedder(nn.Sequential(*layers), 8 * b, cfg.embedding_dim)


def mlp(cfg: EncoderConfig) -> Embedder:
    """A dense twin: flattened pixels -> two hidden layers -> embedding (the classic MNIST-style
    Siamese network). Cheap and fine for small centred images; it knows nothing of locality, so
    convolutional encoders beat it as soon as the objects move or the images grow.
    ``base_channels`` is the first hidden layer's width (default 512; the second is half)."""
    width = cfg.base_channels or 512
    inputs = cfg.in_channels * cfg.height * cfg.width
    layers = [nn.Flatten(), nn.Linear(inputs, width, bias=False), nn.BatchNorm1d(width),
              nn.ReLU(inplace=True), nn.Linear(width, width // 2, bias=False),
              nn.BatchNorm1d(width // 2), nn.ReLU(inplace=True)]
    return Embedder(nn.Sequential(*layers), width // 2, cfg.embedding_dim)


def standard_backbone(name: str):
    """A ResNet or MobileNetV3 (torchvision's layout, no classification layer) and the head."""
    def build(cfg: EncoderConfig) -> Embedder:
        if cfg.base_channels:
            raise ModelError(f"--base-channels does not apply to {name}: its widths are "
                             "those of the published network")
        net = BACKBONES[name].features(cfg.in_channels)
        return Embedder(net, net.feature_dim, cfg.embedding_dim)
    return build


ARCHITECTURES = {
    "tiny": lambda cfg: conv_stack(cfg, cfg.base_channels or 8, (1, 2, 4)),
    "small": lambda cfg: conv_stack(cfg, cfg.base_channels or 32, (1, 2, 4, 4)),
    "conv4": lambda cfg: conv_stack(cfg, cfg.base_channels or 64, (1, 1, 1, 1)),
    "koch": koch,
    "resnet": resnet,
    "mlp": mlp,
    **{name: standard_backbone(name) for name in BACKBONES},
}


def build_encoder(cfg: EncoderConfig) -> nn.Module:
    """A fresh encoder for ``cfg``; a checkpoint's config rebuilds exactly its architecture."""
    if cfg.arch not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {cfg.arch!r} (known: {', '.join(ARCHITECTURES)})")
    if cfg.embedding_dim < 1 or cfg.in_channels not in (1, 3) or cfg.base_channels < 0:
        raise ModelError(f"invalid encoder config: {cfg}")
    return ARCHITECTURES[cfg.arch](cfg)
