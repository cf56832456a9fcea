"""The pair head of Koch, Zemel & Salakhutdinov (2015): binary cross-entropy on |h1 - h2|.

``PairHead`` turns the component-wise distance of two embeddings into the logit of "same class":
``logit = b - sum_j w_j |h1_j - h2_j|`` with ``w_j >= 0`` (kept non-negative through a softplus,
so the score stays a weighted L1 distance and cosine similarity of the embeddings remains a
sensible score for the encoder alone). Target 1 means "same". Only the encoder branch is exported
and used downstream; the head lives in this loss and is saved with the training state.

Pairs come from the P x K batch through ``balanced_pairs``: as many different-class pairs as
same-class ones, so the head is not biased towards "different".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses.base import MetricLoss, zero_loss
from training.sampling import balanced_pairs


class PairHead(nn.Module):
    def __init__(self, embedding_dim: int):
        super().__init__()
        # Start with unrelated unit vectors (L1 distance ~ 1.1 sqrt(D)) at a logit of about -2.
        init = torch.tensor(3.6 / embedding_dim ** 0.5).expm1().log()  # softplus^-1
        self.raw_weight = nn.Parameter(torch.full((embedding_dim,), float(init)))
        self.bias = nn.Parameter(torch.tensor(2.0))

    def forward(self, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        """Logits of "same class" for each row pair."""
        return self.bias - (h1 - h2).abs() @ F.softplus(self.raw_weight)


class PairBCELoss(MetricLoss):
    name = "pair-bce"

    def __init__(self, embedding_dim: int, pairs_per_item: float = 4.0, seed: int = 0):
        super().__init__()
        self.head = PairHead(embedding_dim)
        self.pairs_per_item = pairs_per_item
        self.generator = torch.Generator().manual_seed(seed)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n_pairs = max(2, int(len(labels) * self.pairs_per_item))
        # Drawn on CPU (the generator is a CPU one), then used where the embeddings are.
        i, j, same = (t.to(embeddings.device)
                      for t in balanced_pairs(labels.cpu(), n_pairs, self.generator))
        if len(i) == 0:
            return zero_loss(embeddings)
        logits = self.head(embeddings[i], embeddings[j])
        return F.binary_cross_entropy_with_logits(logits, same.float())
