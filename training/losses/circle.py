"""Circle loss (Sun et al., CVPR 2020), pair-wise form on cosine similarities.

For an anchor with positive similarities ``s_p`` and negative similarities ``s_n``:
``softplus(logsumexp(gamma * a_n * (s_n - m)) + logsumexp(-gamma * a_p * (s_p - (1 - m))))``
with self-paced weights ``a_p = max(0, 1 + m - s_p)``, ``a_n = max(0, s_n + m)`` (not
back-propagated, as in the authors' code). ``m`` is the relaxation margin, ``gamma`` the scale.
The loss is averaged over anchors that have both a positive and a negative in the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.losses.base import MetricLoss, pair_masks, zero_loss


class CircleLoss(MetricLoss):
    name = "circle"

    def __init__(self, m: float = 0.25, gamma: float = 80.0):
        super().__init__()
        self.m, self.gamma = m, gamma

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sim = embeddings @ embeddings.T
        pos, neg = pair_masks(labels)
        anchors = pos.any(dim=1) & neg.any(dim=1)
        if not anchors.any():
            return zero_loss(embeddings)
        a_p = (1 + self.m - sim.detach()).clamp_min(0)
        a_n = (sim.detach() + self.m).clamp_min(0)
        logit_p = -self.gamma * a_p * (sim - (1 - self.m))
        logit_n = self.gamma * a_n * (sim - self.m)
        # Masked entries become -inf so logsumexp ignores them.
        lse_p = torch.logsumexp(logit_p.masked_fill(~pos, float("-inf")), dim=1)
        lse_n = torch.logsumexp(logit_n.masked_fill(~neg, float("-inf")), dim=1)
        return F.softplus(lse_p[anchors] + lse_n[anchors]).mean()
