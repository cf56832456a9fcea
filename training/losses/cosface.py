"""Additive-margin cosine softmax, "CosFace" (Wang et al., CVPR 2018), with a proxy per class.

Each training class has a learnt unit vector (its proxy); an embedding's logits are its cosines
to every proxy, the true class's minus a margin ``m``, all times a scale ``s``, and the loss is
the cross-entropy. Unlike the pair losses, every step compares each image with *all* training
classes, not only the few in its batch: with few classes per batch on a CPU, that is what makes
it learn more per step. Only the encoder is exported; the proxies live in this loss (and in the
training state, for resume). Few-shot evaluation compares embeddings with each other, never
with the proxies, so classes unseen in training work exactly as with the pair losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses.base import MetricLoss


class CosFaceLoss(MetricLoss):
    name = "cosface"

    def __init__(self, num_classes: int, embedding_dim: int, m: float = 0.2, s: float = 24.0,
                 seed: int = 0):
        super().__init__()
        if num_classes < 2:
            raise ValueError("the cosface loss needs at least 2 training classes")
        generator = torch.Generator().manual_seed(seed)
        self.proxies = nn.Parameter(torch.randn(num_classes, embedding_dim, generator=generator))
        self.m, self.s = m, s

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if int(labels.max()) >= len(self.proxies) or int(labels.min()) < 0:
            raise ValueError(f"labels must lie in [0, {len(self.proxies)}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        cosine = embeddings @ F.normalize(self.proxies, dim=1).T
        margin = F.one_hot(labels, len(self.proxies)).to(cosine.dtype) * self.m
        return F.cross_entropy(self.s * (cosine - margin), labels)
