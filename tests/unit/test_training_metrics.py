"""Metrics against scikit-learn and brute-force references on the same scores."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.neighbors import NearestNeighbors

from training.metrics import (
    confusion_matrix,
    few_shot_episodes,
    n_way_k_shot,
    pair_scores,
    verification,
)
from training.retrieval import map_at_r, retrieval_metrics


def clustered(n_classes=8, per_class=6, dim=16, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    x = centres[labels] + noise * rng.standard_normal((len(labels), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_roc_auc_matches_sklearn_including_ties():
    rng = np.random.default_rng(0)
    same = rng.integers(0, 2, 3000)
    scores = np.round(rng.normal(same * 0.8, 1.0), 1)  # rounded: many tied scores
    got = verification(scores, same)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(same, scores), abs=1e-9)


def test_eer_and_thresholds_match_sklearn_roc_curve():
    rng = np.random.default_rng(1)
    same = rng.integers(0, 2, 5000)
    scores = rng.normal(same * 1.5, 1.0)
    got = verification(scores, same, target_far=0.01)
    fpr, tpr, thr = roc_curve(same, scores)
    k = np.argmin(np.abs(fpr - (1 - tpr)))
    assert got["eer"] == pytest.approx((fpr[k] + 1 - tpr[k]) / 2, abs=2e-3)
    # at the EER threshold, the measured false-accept and false-reject rates agree with it
    accept = scores >= got["threshold_eer"]
    far = accept[same == 0].mean()
    frr = 1 - accept[same == 1].mean()
    assert far == pytest.approx(got["eer"], abs=3e-3) and frr == pytest.approx(got["eer"], abs=3e-3)
    # the FAR threshold: at most 1% false accepts, and it is the loosest such cut in sklearn's list
    accept = scores >= got["threshold_far@0.01"]
    assert accept[same == 0].mean() <= 0.01
    best = thr[fpr <= 0.01][-1]
    assert got["threshold_far@0.01"] == pytest.approx(best)
    assert got["tar@far0.01"] == pytest.approx(tpr[fpr <= 0.01][-1])


def test_pair_scores_are_cosines_with_same_flags():
    emb, labels = clustered()
    scores, same = pair_scores(emb, labels)
    n = len(labels)
    assert len(scores) == n * (n - 1) // 2
    i, j = np.triu_indices(n, 1)
    assert np.allclose(scores, np.sum(emb[i] * emb[j], axis=1), atol=1e-6)
    assert np.array_equal(same, labels[i] == labels[j])


def test_retrieval_precision_and_recall_match_sklearn_neighbours():
    emb, labels = clustered(noise=1.2, seed=2)
    got = retrieval_metrics(emb, labels, ks=(1, 5))
    nn = NearestNeighbors(n_neighbors=6, metric="cosine").fit(emb)
    _, idx = nn.kneighbors(emb)
    neighbours = np.array([[j for j in row if j != q][:5] for q, row in enumerate(idx)])
    hits = labels[neighbours] == labels[:, None]
    assert got["precision@1"] == pytest.approx(hits[:, 0].mean())
    assert got["recall@5"] == pytest.approx(hits.any(axis=1).mean())
    assert 0 < got["precision@1"] < 1  # the data are hard enough for this to mean something


def test_map_at_r_matches_brute_force_and_the_papers_example():
    emb, labels = clustered(noise=1.0, seed=3, per_class=5)
    got = retrieval_metrics(emb, labels)["map@r"]
    expected = []
    for q in range(len(labels)):
        order = [j for j in np.argsort(-(emb @ emb[q]), kind="stable") if j != q]
        r = int(np.sum(labels == labels[q])) - 1
        rel = [labels[j] == labels[q] for j in order[:r]]
        expected.append(sum(np.mean(rel[:i + 1]) for i in range(r) if rel[i]) / r)
    assert got == pytest.approx(np.mean(expected))


def test_map_at_r_worked_example_of_musgrave_et_al():
    # R = 10 relevant items; the top 10 holds them at ranks 1 and 3: (1/1 + 2/3) / 10
    relevance = np.zeros((1, 12), dtype=bool)
    relevance[0, [0, 2, 11]] = True  # a hit beyond rank R does not count
    assert map_at_r(relevance, np.array([10]))[0] == pytest.approx((1 + 2 / 3) / 10)


def test_n_way_accuracy_perfect_and_chance():
    emb, labels = clustered(noise=0.01)
    assert n_way_k_shot(emb, labels, ways=5, episodes=50)["accuracy"] == 1.0
    rng = np.random.default_rng(4)
    random_emb = rng.standard_normal((400, 32)).astype(np.float32)
    random_emb /= np.linalg.norm(random_emb, axis=1, keepdims=True)
    chance = n_way_k_shot(random_emb, np.repeat(np.arange(40), 10), ways=10, episodes=300)
    assert chance["accuracy"] == pytest.approx(0.1, abs=0.03)
    low, high = chance["ci95"]
    assert low < chance["accuracy"] < high and high - low < 0.1


def test_episodes_give_the_confusion_matrix():
    emb, labels = clustered(noise=0.9, seed=5)
    ep = few_shot_episodes(emb, labels, ways=4, shots=2, episodes=30)
    matrix = confusion_matrix(ep.true, ep.predicted, 8)
    assert matrix.sum() == 30 * 4
    assert np.trace(matrix) / matrix.sum() == pytest.approx(ep.accuracy.mean())
    with pytest.raises(ValueError, match="need 9 classes"):
        few_shot_episodes(emb, labels, ways=9)
