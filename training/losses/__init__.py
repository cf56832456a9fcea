"""Metric-learning losses, one per module, all ``loss(embeddings [N, D], labels [N]) -> scalar``.

``build_loss`` maps a name and the training options to a loss; parameters that a loss does not
take are ignored, so one ``TrainConfig`` serves them all.
"""

from __future__ import annotations

from training.config import LOSSES
from training.losses.base import MetricLoss
from training.losses.circle import CircleLoss
from training.losses.contrastive import ContrastiveLoss, contrastive_pairs
from training.losses.pair_bce import PairBCELoss, PairHead
from training.losses.triplet import MINING, TripletLoss

__all__ = ["LOSSES", "MINING", "CircleLoss", "ContrastiveLoss", "MetricLoss", "PairBCELoss",
           "PairHead", "TripletLoss", "build_loss", "contrastive_pairs"]


def build_loss(name: str, embedding_dim: int, margin: float | None = None,
               mining: str = "semi-hard", circle_gamma: float = 80.0,
               seed: int = 0) -> MetricLoss:
    """``margin=None`` takes each loss's own default (contrastive 0.5, triplet 0.2, circle 0.25)."""
    if name == "contrastive":
        return ContrastiveLoss(margin=0.5 if margin is None else margin)
    if name == "triplet":
        return TripletLoss(margin=0.2 if margin is None else margin, mining=mining, seed=seed)
    if name == "circle":
        return CircleLoss(m=0.25 if margin is None else margin, gamma=circle_gamma)
    if name == "pair-bce":
        return PairBCELoss(embedding_dim, seed=seed)
    raise ValueError(f"unknown loss {name!r} (known: {', '.join(LOSSES)})")
