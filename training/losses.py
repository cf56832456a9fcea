"""Metric-learning losses on a batch of L2-normalised embeddings with class labels."""

from __future__ import annotations

import torch


def contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor,
                     margin: float = 0.5) -> torch.Tensor:
    """Contrastive loss (Hadsell et al. 2006) over every pair in the batch.

    Convention: a pair is "same" (y = 1) when its labels are equal. Same pairs pay d^2, different
    pairs pay max(0, margin - d)^2, with d the Euclidean distance between unit vectors (0..2).
    Positive and negative terms are averaged separately so class balance in the batch does not
    tilt the loss.
    """
    dist = torch.cdist(embeddings, embeddings).clamp_min(0)
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos = same & off_diagonal
    neg = ~same
    pos_loss = dist[pos].pow(2).mean() if pos.any() else dist.new_zeros(())
    neg_loss = (margin - dist[neg]).clamp_min(0).pow(2).mean() if neg.any() else dist.new_zeros(())
    return pos_loss + neg_loss
