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

    def __init__(self, labels: np.ndarray, p: int, k: int, groups: dict[int, int] | None = None,
                 within: float = 0.0):
        self.by_class = {int(c): list(np.flatnonzero(labels == c)) for c in np.unique(labels)}
        self.p, self.k = p, k
        # ``within``: share of batches whose classes all come from one group (a parent folder):
        # similar classes side by side, the hard negatives a door meets.
        self.groups, self.within = groups or {}, within if groups else 0.0

    @property
    def classes(self) -> list[int]:
        return [c for c, idx in self.by_class.items() if len(idx) >= 2]

    def batch(self, rng: np.random.Generator) -> np.ndarray:
        classes = self.classes
        if len(classes) < 2:
            raise ValueError("fewer than 2 classes with at least 2 readable images are left")
        if self.within and rng.random() < self.within:
            by_group: dict[int, list[int]] = {}
            for c in classes:
                by_group.setdefault(self.groups[c], []).append(c)
            pools = [pool for pool in by_group.values() if len(pool) >= 2]
            if pools:
                classes = pools[rng.integers(len(pools))]
        chosen = rng.choice(classes, size=min(self.p, len(classes)), replace=False)
        return np.concatenate([
            rng.choice(self.by_class[c], size=self.k, replace=len(self.by_class[c]) < self.k)
            for c in chosen])

    def discard(self, index: int, label: int) -> None:
        if index in self.by_class.get(label, ()):
            self.by_class[label].remove(index)


class _BatchClasses:
    """The classes of a batch as index ranges into the batch sorted by label (vectorised draws)."""

    def __init__(self, labels: torch.Tensor, generator: torch.Generator):
        self.order = torch.argsort(labels, stable=True)
        _, self.counts = torch.unique(labels, return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.with_pairs = torch.nonzero(self.counts >= 2).flatten()
        self.generator = generator

    def below(self, n: torch.Tensor) -> torch.Tensor:
        """Uniform integers in [0, n) for each entry of ``n``."""
        return (torch.rand(len(n), generator=self.generator) * n).long().clamp_max(n - 1)

    def item(self, group: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self.order[self.starts[group] + position]

    def two_items(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` pairs of distinct items of one class each, the class drawn uniformly."""
        group = self.with_pairs[self.below(torch.full((n,), len(self.with_pairs)))]
        size = self.counts[group]
        a = self.below(size)
        b = (a + 1 + self.below(size - 1)) % size
        return group, self.item(group, a), self.item(group, b)

    def other_item(self, group: torch.Tensor) -> torch.Tensor:
        """One item of a class drawn uniformly among the classes other than ``group``."""
        r = self.below(torch.full((len(group),), len(self.counts) - 1))
        other = r + (r >= group).long()
        return self.item(other, self.below(self.counts[other]))


def balanced_pairs(labels: torch.Tensor, n_pairs: int, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n_pairs`` index pairs ``(i, j)`` within a batch, half same-class and half different.

    Same-class pairs pick their class uniformly (then two distinct items of it); different-class
    pairs pick two distinct classes uniformly. Returns ``i, j, same`` (same: 1 = same class).
    """
    batch = _BatchClasses(labels, generator)
    if len(batch.counts) < 2:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty
    n_pos = n_pairs // 2 if len(batch.with_pairs) else 0
    n_neg = n_pairs - n_pos
    _, i_pos, j_pos = batch.two_items(n_pos)
    g_neg = batch.below(torch.full((n_neg,), len(batch.counts)))
    i_neg = batch.item(g_neg, batch.below(batch.counts[g_neg]))
    j_neg = batch.other_item(g_neg)
    same = torch.cat([torch.ones(n_pos, dtype=torch.long), torch.zeros(n_neg, dtype=torch.long)])
    return torch.cat([i_pos, i_neg]), torch.cat([j_pos, j_neg]), same


def balanced_triplets(labels: torch.Tensor, n: int, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` (anchor, positive, negative) triplets; the anchor's class is drawn uniformly among
    classes with two or more items, the negative's uniformly among the others."""
    batch = _BatchClasses(labels, generator)
    if not len(batch.with_pairs) or len(batch.counts) < 2:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty
    group, anchors, positives = batch.two_items(n)
    return anchors, positives, batch.other_item(group)
