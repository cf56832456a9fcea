"""Contrastive loss (Hadsell, Chopra & LeCun 2006).

Label convention, stated because the origin documents disagree: Hadsell et al. write Y = 0 for a
similar pair, most later code writes 1 for "same". ``contrastive_pairs`` therefore takes the value
that means "same" as a required argument (``same_label=0`` or ``same_label=1``), with no default.
``ContrastiveLoss`` works on class labels, where there is no ambiguity: equal class labels are a
similar pair.

A similar pair pays ``max(0, d - pos_margin)^2``; a dissimilar pair pays ``max(0, margin - d)^2``,
with ``d`` the Euclidean distance between unit embeddings (0..2).
"""

from __future__ import annotations

import torch

from training.losses.base import MetricLoss, pair_masks, unit_distances, zero_loss


def contrastive_pairs(distances: torch.Tensor, pair_labels: torch.Tensor, margin: float,
                      *, same_label: int, pos_margin: float = 0.0) -> torch.Tensor:
    """Mean contrastive loss of explicit pairs; ``same_label`` says which label marks "same"."""
    if same_label not in (0, 1):
        raise ValueError("same_label must be 0 (Hadsell et al.) or 1 (same = 1)")
    same = pair_labels == same_label
    pos = (distances - pos_margin).clamp_min(0).pow(2)
    neg = (margin - distances).clamp_min(0).pow(2)
    return torch.where(same, pos, neg).mean()


class ContrastiveLoss(MetricLoss):
    """Every pair of the batch; positive and negative terms are averaged separately, so the many
    more negative pairs of a P x K batch do not drown the positives."""

    name = "contrastive"

    def __init__(self, margin: float = 0.5, pos_margin: float = 0.0):
        super().__init__()
        self.margin, self.pos_margin = margin, pos_margin

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dist = unit_distances(embeddings)
        pos, neg = pair_masks(labels)
        loss = zero_loss(embeddings)
        if pos.any():
            loss = loss + (dist[pos] - self.pos_margin).clamp_min(0).pow(2).mean()
        if neg.any():
            loss = loss + (self.margin - dist[neg]).clamp_min(0).pow(2).mean()
        return loss
