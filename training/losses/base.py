"""The base of every metric-learning loss: shape checks, pair masks, distances.

A loss takes a batch of L2-normalised embeddings ``[N, D]`` and integer class labels ``[N]``
(equal labels = same class) and returns a scalar. Subclasses implement ``compute_loss`` only.
"""

from __future__ import annotations

import torch
from torch import nn


class MetricLoss(nn.Module):
    name = ""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or labels.ndim != 1 or len(embeddings) != len(labels):
            raise ValueError(f"{type(self).__name__} needs embeddings [N, D] and labels [N], got "
                             f"{tuple(embeddings.shape)} and {tuple(labels.shape)}")
        if len(labels) < 2:
            raise ValueError(f"{type(self).__name__} needs a batch of at least 2 embeddings")
        return self.compute_loss(embeddings, labels)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, N]`` masks of positive pairs (same label, i != j) and negative pairs."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def unit_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between unit vectors, sqrt(2 - 2 cos), in [0, 2].

    Computed from the cosine with a clamp so the gradient stays finite where two embeddings
    coincide (torch.cdist's gradient is NaN at distance 0, the diagonal included).
    """
    cosine = embeddings @ embeddings.T
    return (2 - 2 * cosine).clamp_min(1e-12).sqrt()


def zero_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """A zero that still belongs to the graph (a batch with nothing to learn from)."""
    return embeddings.sum() * 0.0
