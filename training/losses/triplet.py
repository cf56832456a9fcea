"""Triplet loss with margin (Schroff, Kalenichenko & Philbin 2015) and in-batch mining.

A triplet (anchor a, positive p of a's class, negative n of another class) pays
``max(0, d(a, p) - d(a, n) + margin)``, ``d`` the Euclidean distance between unit embeddings.
Mining picks the triplets from a P x K batch:

- ``batch-all``: every valid triplet; the mean is over triplets with a non-zero loss, so the
  easy ones (most of them, later in training) do not dilute the gradient (Hermans et al. 2017).
- ``batch-hard``: per anchor, its farthest positive and its nearest negative (Hermans et al.).
- ``semi-hard``: per (anchor, positive), the nearest negative that is still farther than the
  positive; when there is none, the farthest negative (FaceNet; as in TensorFlow Addons).
- ``random``: as many class-balanced random triplets as the batch has items
  (``balanced_triplets``), no mining: the baseline the others are measured against.
"""

from __future__ import annotations

import torch

from training.config import MINING
from training.losses.base import MetricLoss, pair_masks, unit_distances, zero_loss
from training.sampling import balanced_triplets


class TripletLoss(MetricLoss):
    name = "triplet"

    def __init__(self, margin: float = 0.2, mining: str = "semi-hard", seed: int = 0):
        super().__init__()
        if mining not in MINING:
            raise ValueError(f"mining must be one of {', '.join(MINING)}, got {mining!r}")
        self.margin, self.mining = margin, mining
        self.generator = torch.Generator().manual_seed(seed)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dist = unit_distances(embeddings)
        pos, neg = pair_masks(labels)
        if not pos.any() or not neg.any():
            return zero_loss(embeddings)
        if self.mining == "random":
            a, p, n = (t.to(dist.device)  # drawn on CPU, where the generator is
                       for t in balanced_triplets(labels.cpu(), len(labels), self.generator))
            return (dist[a, p] - dist[a, n] + self.margin).clamp_min(0).mean()
        if self.mining == "batch-hard":
            hardest_pos = torch.where(pos, dist, torch.zeros_like(dist)).amax(dim=1)
            hardest_neg = torch.where(neg, dist, torch.full_like(dist, 4.0)).amin(dim=1)
            has_pos = pos.any(dim=1) & neg.any(dim=1)
            losses = (hardest_pos - hardest_neg + self.margin).clamp_min(0)
            return losses[has_pos].mean()
        # [a, p, n] = d(a, p) - d(a, n) + margin, valid where (a, p) positive and (a, n) negative
        d_ap = dist[:, :, None]
        d_an = dist[:, None, :]
        valid = pos[:, :, None] & neg[:, None, :]
        if self.mining == "batch-all":
            losses = (d_ap - d_an + self.margin).clamp_min(0)[valid]
            active = losses > 1e-12
            return losses[active].mean() if active.any() else zero_loss(embeddings)
        # semi-hard: nearest negative beyond the positive, else the farthest negative
        beyond = valid & (d_an > d_ap)
        inf = torch.tensor(float("inf"), device=dist.device)
        nearest_beyond = torch.where(beyond, d_an.expand_as(valid), inf).amin(dim=2)
        farthest = torch.where(neg, dist, -inf).amax(dim=1)[:, None].expand_as(nearest_beyond)
        chosen = torch.where(beyond.any(dim=2), nearest_beyond, farthest)
        return (dist - chosen + self.margin).clamp_min(0)[pos].mean()
