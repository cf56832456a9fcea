"""Class-balanced sampling: P classes x K images batches, and balanced pairs and triplets.

Every class is drawn with the same probability whatever its size, so a rare class is seen as
often as a common one: the class-imbalance promise of the twin approach. A class smaller than K
is sampled with replacement.
"""

from __future__ import annotations

import numpy as np
import torch


class PKSampler:
    """Batches of indices: ``p`` distinct classes, ``k`` images of each.

    ``discard`` removes an image that turned out unreadable; a class left with fewer than two
    images stops being drawn (it can no longer give a positive pair).
    """

    def __init__(self, labels: np.ndarray, p: int, k: int):
        self.by_class = {int(c): list(np.flatnonzero(labels == c)) for c in np.unique(labels)}
        self.p, self.k = p, k

    @property
    def classes(self) -> list[int]:
        return [c for c, idx in self.by_class.items() if len(idx) >= 2]

    def batch(self, rng: np.random.Generator) -> np.ndarray:
        classes = self.classes
        if len(classes) < 2:
            raise ValueError("fewer than 2 classes with at least 2 readable images are left")
        chosen = rng.choice(classes, size=min(self.p, len(classes)), replace=False)
        return np.concatenate([
            rng.choice(self.by_class[c], size=self.k, replace=len(self.by_class[c]) < self.k)
            for c in chosen])

    def discard(self, index: int, label: int) -> None:
        if index in self.by_class.get(label, ()):
            self.by_class[label].remove(index)


def _groups(labels: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Positions of each class in the batch, and of the classes with at least two items."""
    groups = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    return groups, [g for g in groups if len(g) >= 2]


def _pick(items: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    return items[torch.randint(len(items), (n,), generator=generator)]


def balanced_pairs(labels: torch.Tensor, n_pairs: int, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n_pairs`` index pairs ``(i, j)`` within a batch, half same-class and half different.

    Same-class pairs pick their class uniformly (then two distinct items of it); different-class
    pairs pick two distinct classes uniformly. Returns ``i, j, same`` (same: 1 = same class).
    """
    groups, pos_groups = _groups(labels)
    n_pos = n_pairs // 2 if pos_groups and len(groups) >= 2 else 0
    n_neg = n_pairs - n_pos if len(groups) >= 2 else 0
    i, j = [], []
    for g in (_pick(torch.arange(len(pos_groups)), n_pos, generator).tolist() if n_pos else []):
        a, b = torch.randperm(len(pos_groups[g]), generator=generator)[:2]
        i.append(pos_groups[g][a])
        j.append(pos_groups[g][b])
    for _ in range(n_neg):
        g1, g2 = torch.randperm(len(groups), generator=generator)[:2].tolist()
        i.append(_pick(groups[g1], 1, generator)[0])
        j.append(_pick(groups[g2], 1, generator)[0])
    same = torch.tensor([1] * n_pos + [0] * n_neg, dtype=torch.long)
    as_tensor = lambda xs: torch.stack(xs) if xs else torch.zeros(0, dtype=torch.long)  # noqa: E731
    return as_tensor(i), as_tensor(j), same


def balanced_triplets(labels: torch.Tensor, n: int, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` (anchor, positive, negative) triplets; the anchor's class is drawn uniformly among
    classes with two or more items, the negative's uniformly among the others."""
    groups, pos_groups = _groups(labels)
    anchors, positives, negatives = [], [], []
    if not pos_groups or len(groups) < 2:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty
    for g in _pick(torch.arange(len(pos_groups)), n, generator).tolist():
        group = pos_groups[g]
        a, p = torch.randperm(len(group), generator=generator)[:2]
        others = [h for h in groups if labels[h[0]] != labels[group[0]]]
        other = others[int(torch.randint(len(others), (1,), generator=generator))]
        anchors.append(group[a])
        positives.append(group[p])
        negatives.append(_pick(other, 1, generator)[0])
    return torch.stack(anchors), torch.stack(positives), torch.stack(negatives)
