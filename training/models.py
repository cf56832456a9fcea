"""Encoder networks. Each maps ``[N, C, H, W]`` to L2-normalised ``[N, D]`` embeddings."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from twinstream.errors import ModelError


@dataclass(frozen=True)
class EncoderConfig:
    """Everything needed to rebuild an encoder; saved beside its weights in the checkpoint."""

    arch: str = "small"
    in_channels: int = 3
    height: int = 64
    width: int = 64
    embedding_dim: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2))


class ConvEncoder(nn.Module):
    """A stack of conv-BN-ReLU-pool blocks, global average pooling and a linear projection."""

    def __init__(self, cfg: EncoderConfig, widths: tuple[int, ...]):
        super().__init__()
        blocks, c_in = [], cfg.in_channels
        for width in widths:
            blocks.append(conv_block(c_in, width))
            c_in = width
        self.features = nn.Sequential(*blocks)
        self.project = nn.Linear(c_in, cfg.embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean(dim=(2, 3))
        return F.normalize(self.project(h), dim=1)


ARCHITECTURES = {
    "tiny": (8, 16, 32),
    "small": (32, 64, 128, 128),
}


def build_encoder(cfg: EncoderConfig) -> nn.Module:
    if cfg.arch not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {cfg.arch!r} (known: {sorted(ARCHITECTURES)})")
    return ConvEncoder(cfg, ARCHITECTURES[cfg.arch])
