"""Class-balanced sampling: rare classes are drawn as often as common ones."""

from collections import Counter

import numpy as np
import pytest
import torch

from training.sampling import PKSampler, balanced_pairs, balanced_triplets

# Class 0 has 200 images, class 1 has 3, classes 2..5 have 20 each.
IMBALANCED = np.array([0] * 200 + [1] * 3 + [c for c in range(2, 6) for _ in range(20)])


def test_pk_batches_have_p_classes_times_k_images_and_balance_rare_classes():
    sampler = PKSampler(IMBALANCED, p=3, k=4)
    rng = np.random.default_rng(0)
    per_class = Counter()
    for _ in range(600):
        batch = sampler.batch(rng)
        counts = Counter(IMBALANCED[batch].tolist())
        assert len(batch) == 12 and len(counts) == 3 and set(counts.values()) == {4}
        per_class.update(counts)
    # 6 classes drawn uniformly: each about 600 * 3 / 6 * 4 = 1200 images, the rare one included
    for c in range(6):
        assert 1000 < per_class[c] < 1400, per_class
    assert per_class[1] > 20 * 3  # the 3-image class is sampled with replacement, many times


def test_discarded_images_are_not_drawn_again_and_empty_classes_drop_out():
    sampler = PKSampler(IMBALANCED, p=6, k=2)
    rng = np.random.default_rng(1)
    for i in np.flatnonzero(IMBALANCED == 1)[:2]:
        sampler.discard(int(i), 1)
    assert 1 not in sampler.classes  # one image left: no positive pair possible
    drawn = np.concatenate([sampler.batch(rng) for _ in range(50)])
    assert not np.isin(np.flatnonzero(IMBALANCED == 1), drawn).any()
    for c in range(2, 6):
        for i in np.flatnonzero(c == IMBALANCED):
            sampler.discard(int(i), c)
    with pytest.raises(ValueError, match="fewer than 2 classes"):
        sampler.batch(rng)


def test_balanced_pairs_are_half_positive_and_correct():
    labels = torch.tensor([0] * 10 + [1] * 2 + [2] * 2)
    g = torch.Generator().manual_seed(0)
    i, j, same = balanced_pairs(labels, 4000, g)
    assert same.sum().item() == 2000
    assert torch.equal((labels[i] == labels[j]).long(), same)
    assert (i != j).all()
    # positives: each of the 3 classes about a third, however many items it has
    pos_classes = Counter(labels[i[same == 1]].tolist())
    assert all(550 < pos_classes[c] < 780 for c in range(3)), pos_classes


def test_balanced_pairs_without_positives_gives_only_negatives():
    i, _, same = balanced_pairs(torch.tensor([0, 1, 2]), 6, torch.Generator().manual_seed(0))
    assert len(i) == 6 and same.sum() == 0


def test_balanced_triplets_are_valid():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    a, p, n = balanced_triplets(labels, 500, torch.Generator().manual_seed(0))
    assert (labels[a] == labels[p]).all() and (a != p).all() and (labels[a] != labels[n]).all()
    anchor_classes = Counter(labels[a].tolist())
    assert set(anchor_classes) == {0, 1} and abs(anchor_classes[0] - anchor_classes[1]) < 100


def test_parent_batches_draw_every_class_from_one_parent():
    labels = np.repeat(np.arange(12), 4)
    groups = {c: c // 4 for c in range(12)}  # three parents of four classes
    sampler = PKSampler(labels, p=3, k=2, groups=groups, within=1.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        classes = set(labels[sampler.batch(rng)])
        assert len(classes) == 3 and len({groups[c] for c in classes}) == 1
    mixed = PKSampler(labels, p=6, k=2, groups=groups, within=0.0)
    parents_seen = [len({groups[c] for c in labels[mixed.batch(rng)]}) for _ in range(20)]
    assert max(parents_seen) > 1
    plain = PKSampler(labels, p=6, k=2)
    assert np.array_equal(plain.batch(np.random.default_rng(1)),
                          mixed.batch(np.random.default_rng(1)))  # off: the same draws as before
