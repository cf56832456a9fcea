"""Every loss against a slow, obviously-correct reference, plus the behaviour that matters."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    CircleLoss,
    ContrastiveLoss,
    PairBCELoss,
    TripletLoss,
    build_loss,
    contrastive_pairs,
)


def unit(n=12, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


LABELS = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])


def dist(a, b):
    return float(torch.linalg.norm(a - b))


def test_contrastive_pairs_needs_the_label_convention_and_honours_both():
    d = torch.tensor([0.2, 0.9])
    hadsell = contrastive_pairs(d, torch.tensor([0, 1]), margin=0.5, same_label=0)
    same_is_one = contrastive_pairs(d, torch.tensor([1, 0]), margin=0.5, same_label=1)
    # first pair same (pays d^2 = 0.04), second different and beyond the margin (pays 0)
    assert hadsell.item() == pytest.approx(0.02) and same_is_one.item() == pytest.approx(0.02)
    flipped = contrastive_pairs(d, torch.tensor([1, 0]), margin=0.5, same_label=0)
    assert flipped.item() == pytest.approx((0.3 ** 2 + 0.9 ** 2) / 2)  # roles swapped
    with pytest.raises(TypeError):
        contrastive_pairs(d, torch.tensor([0, 1]), 0.5)  # no silent default convention
    with pytest.raises(ValueError):
        contrastive_pairs(d, torch.tensor([0, 1]), 0.5, same_label=2)


def test_contrastive_loss_matches_a_loop_over_pairs():
    emb, margin = unit(), 0.9
    pos, neg = [], []
    for i, j in itertools.permutations(range(len(LABELS)), 2):
        d = dist(emb[i], emb[j])
        (pos if LABELS[i] == LABELS[j] else neg).append(
            d ** 2 if LABELS[i] == LABELS[j] else max(0, margin - d) ** 2)
    expected = sum(pos) / len(pos) + sum(neg) / len(neg)
    assert ContrastiveLoss(margin)(emb, LABELS).item() == pytest.approx(expected, rel=1e-5)


def brute_triplets(emb, labels, margin):
    """Every valid (a, p, n) with its hinge loss."""
    out = []
    for a, p, n in itertools.permutations(range(len(labels)), 3):
        if labels[a] == labels[p] and labels[a] != labels[n]:
            out.append((a, p, n, dist(emb[a], emb[p]) - dist(emb[a], emb[n]) + margin))
    return out


def test_triplet_batch_all_matches_brute_force():
    emb, margin = unit(seed=1), 0.3
    active = [v for *_, v in brute_triplets(emb, LABELS, margin) if v > 1e-12]
    got = TripletLoss(margin, "batch-all")(emb, LABELS).item()
    assert got == pytest.approx(sum(active) / len(active), rel=1e-5)


def test_triplet_batch_hard_matches_brute_force():
    emb, margin = unit(seed=2), 0.3
    losses = []
    for a in range(len(LABELS)):
        pos = [dist(emb[a], emb[p]) for p in range(len(LABELS))
               if p != a and LABELS[p] == LABELS[a]]
        neg = [dist(emb[a], emb[n]) for n in range(len(LABELS)) if LABELS[n] != LABELS[a]]
        losses.append(max(0.0, max(pos) - min(neg) + margin))
    got = TripletLoss(margin, "batch-hard")(emb, LABELS).item()
    assert got == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_triplet_semi_hard_matches_brute_force():
    emb, margin = unit(seed=3), 0.3
    losses = []
    for a, p in itertools.permutations(range(len(LABELS)), 2):
        if LABELS[a] != LABELS[p]:
            continue
        d_ap = dist(emb[a], emb[p])
        negs = [dist(emb[a], emb[n]) for n in range(len(LABELS)) if LABELS[n] != LABELS[a]]
        beyond = [d for d in negs if d > d_ap]
        d_an = min(beyond) if beyond else max(negs)
        losses.append(max(0.0, d_ap - d_an + margin))
    got = TripletLoss(margin, "semi-hard")(emb, LABELS).item()
    assert got == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_triplet_random_mining_draws_valid_triplets():
    emb = unit(seed=4)
    value = TripletLoss(0.2, "random", seed=1)(emb, LABELS).item()
    all_values = [max(0.0, v) for *_, v in brute_triplets(emb, LABELS, 0.2)]
    assert min(all_values) - 1e-6 <= value <= max(all_values) + 1e-6


def test_circle_loss_matches_the_formula_per_anchor():
    emb, m, gamma = unit(seed=5), 0.25, 32.0
    sim = emb @ emb.T
    per_anchor = []
    for a in range(len(LABELS)):
        lp = [-gamma * max(0.0, 1 + m - float(sim[a, p])) * (float(sim[a, p]) - (1 - m))
              for p in range(len(LABELS)) if p != a and LABELS[p] == LABELS[a]]
        ln = [gamma * max(0.0, float(sim[a, n]) + m) * (float(sim[a, n]) - m)
              for n in range(len(LABELS)) if LABELS[n] != LABELS[a]]
        lse = math.log(sum(math.exp(v) for v in lp)) + math.log(sum(math.exp(v) for v in ln))
        per_anchor.append(math.log1p(math.exp(lse)))
    got = CircleLoss(m, gamma)(emb, LABELS).item()
    assert got == pytest.approx(sum(per_anchor) / len(per_anchor), rel=1e-4)


def test_pair_head_is_a_weighted_l1_distance():
    loss = PairBCELoss(embedding_dim=8)
    a, b = unit(2, 8, seed=6)
    logit_same = loss.head(a[None], a[None])
    logit_far = loss.head(a[None], b[None])
    assert logit_same.item() == pytest.approx(loss.head.bias.item())
    assert logit_far.item() < logit_same.item()  # non-negative weights: farther = less "same"


def test_pair_bce_uses_balanced_pairs_and_is_a_bce():
    loss = PairBCELoss(embedding_dim=8, seed=0)
    value = loss(unit(seed=7), LABELS)
    assert 0 < value.item() < 10
    value.backward()
    assert loss.head.raw_weight.grad is not None


@pytest.mark.parametrize("name", ["contrastive", "triplet", "circle", "pair-bce"])
def test_every_loss_separates_classes_when_optimised(name):
    """Optimise free embeddings with the loss: same-class pairs end up closer than others."""
    torch.manual_seed(0)
    raw = torch.randn(24, 16, requires_grad=True)
    labels = torch.arange(6).repeat_interleave(4)
    loss_fn = build_loss(name, 16)
    opt = torch.optim.Adam([raw, *loss_fn.parameters()], lr=0.05)
    for _ in range(150):
        loss = loss_fn(F.normalize(raw, dim=1), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    emb = F.normalize(raw.detach(), dim=1)
    sim = emb @ emb.T
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(24, dtype=torch.bool)
    assert sim[same & off].min() > sim[~same].max(), name


@pytest.mark.parametrize("name", ["contrastive", "triplet", "circle", "pair-bce"])
def test_losses_survive_identical_embeddings_and_single_class_batches(name):
    loss_fn = build_loss(name, 8)
    emb = F.normalize(torch.ones(6, 8), dim=1).requires_grad_(True)
    loss = loss_fn(emb, torch.tensor([0, 0, 1, 1, 2, 2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()
    one_class = loss_fn(unit(4, 8), torch.zeros(4, dtype=torch.long))
    assert torch.isfinite(one_class)


def test_losses_check_their_inputs():
    with pytest.raises(ValueError, match="embeddings"):
        ContrastiveLoss()(unit(4, 8), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="mining"):
        TripletLoss(mining="hardest")
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("arcface", 8)
