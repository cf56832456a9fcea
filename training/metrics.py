"""Few-shot and verification metrics on embeddings (numpy only, so ONNX models use them too)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.openset import episode_pools


@dataclass
class Episodes:
    """Outcome of N-way K-shot episodes: per-episode accuracy and every query's true and
    predicted class (the material of the confusion matrix)."""

    ways: int
    shots: int
    accuracy: np.ndarray  # [episodes]
    true: np.ndarray  # [episodes * ways] class labels
    predicted: np.ndarray

    def summary(self) -> dict:
        acc = float(self.accuracy.mean())
        n = len(self.accuracy)
        half = 1.96 * float(self.accuracy.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
        return {"ways": self.ways, "shots": self.shots, "episodes": n, "accuracy": acc,
                "ci95": [max(0.0, acc - half), min(1.0, acc + half)]}


def few_shot_episodes(embeddings: np.ndarray, labels: np.ndarray, ways: int, shots: int = 1,
                      episodes: int = 400, seed: int = 0,
                      groups: np.ndarray | None = None) -> Episodes:
    """Run N-way K-shot episodes: each draws ``ways`` classes, ``shots`` support images and one
    query per class, and predicts the class whose mean support embedding is most similar
    (cosine). With one shot this is the classic one-shot task of Koch et al.: which of N
    images, one per class, shows the same character as the query? With ``groups`` (a parent id
    per class label) each episode draws its classes inside one parent with enough of them
    (Lake et al.'s within-alphabet protocol)."""
    if ways < 2:
        raise ValueError("episodes need at least 2 ways")
    rng = np.random.default_rng(seed)
    classes = np.array([c for c in np.unique(labels) if np.sum(labels == c) >= shots + 1])
    if len(classes) < ways:
        raise ValueError(f"{ways}-way episodes need {ways} classes with at least {shots + 1} "
                         f"images each; only {len(classes)} have that many")
    pools = [classes] if groups is None else episode_pools(
        labels, ways, shots + 1, groups, f"{ways}-way {shots}-shot evaluation")
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    accuracy = np.zeros(episodes, dtype=np.float64)
    true, predicted = [], []
    for e in range(episodes):
        pool = pools[rng.integers(len(pools))] if len(pools) > 1 else pools[0]
        chosen = rng.choice(pool, size=ways, replace=False)
        supports, queries = [], []
        for c in chosen:
            idx = rng.choice(by_class[c], size=shots + 1, replace=False)
            supports.append(embeddings[idx[:shots]].mean(axis=0))
            queries.append(embeddings[idx[shots]])
        support = np.stack(supports)
        support /= np.maximum(np.linalg.norm(support, axis=1, keepdims=True), 1e-12)
        scores = np.stack(queries) @ support.T  # [ways (queries), ways (classes)]
        guess = np.argmax(scores, axis=1)
        accuracy[e] = np.mean(guess == np.arange(ways))
        true.append(chosen)
        predicted.append(chosen[guess])
    return Episodes(ways, shots, accuracy, np.concatenate(true), np.concatenate(predicted))


def n_way_k_shot(embeddings: np.ndarray, labels: np.ndarray, ways: int, shots: int = 1,
                 episodes: int = 400, seed: int = 0) -> dict:
    """Accuracy of N-way K-shot episodes with a 95% normal-approximation interval."""
    return few_shot_episodes(embeddings, labels, ways, shots, episodes, seed).summary()


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """``[true, predicted]`` counts."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (true, predicted), 1)
    return matrix


def pair_scores(embeddings: np.ndarray, labels: np.ndarray, max_pairs: int = 200_000,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities and same(1)/different(0) flags of (up to ``max_pairs``) image pairs."""
    n = len(labels)
    i, j = np.triu_indices(n, k=1)
    if len(i) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(i), size=max_pairs, replace=False)
        i, j = i[pick], j[pick]
    # float32 dot products of unit vectors can land a rounding step above 1 (a collapsed,
    # barely trained encoder gives nearly identical vectors); a cosine stays in [-1, 1]
    scores = np.clip(np.einsum("nd,nd->n", embeddings[i], embeddings[j]), -1.0, 1.0)
    return scores, (labels[i] == labels[j]).astype(np.int8)


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-accept rate, true-accept rate and thresholds, for "same" when score >= threshold."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], same[order].astype(np.float64)
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = np.cumsum(1 - y)[distinct]
    pos, neg = max(y.sum(), 1), max((1 - y).sum(), 1)
    far = np.r_[0.0, fp / neg]
    tar = np.r_[0.0, tp / pos]
    thresholds = np.r_[np.inf, s[distinct]]
    return far, tar, thresholds


def verification(scores: np.ndarray, same: np.ndarray, target_far: float = 0.01) -> dict:
    """ROC AUC, equal-error rate, and thresholds at the EER and at a target false-accept rate."""
    far, tar, thresholds = roc_curve(scores, same)
    auc = float(np.trapezoid(tar, far))
    frr = 1 - tar
    k = int(np.argmin(np.abs(far - frr)))
    eer = float((far[k] + frr[k]) / 2)
    ok = np.flatnonzero(far <= target_far)
    k_far = int(ok[-1]) if len(ok) else 0
    finite = np.isfinite(thresholds)
    top = float(thresholds[finite].max()) if finite.any() else 1.0
    clamp = lambda t: float(t) if math.isfinite(t) else top  # noqa: E731
    return {"roc_auc": auc, "eer": eer, "threshold_eer": clamp(thresholds[k]),
            "target_far": target_far, f"threshold_far@{target_far:g}": clamp(thresholds[k_far]),
            f"tar@far{target_far:g}": float(tar[k_far]), "pairs": len(scores),
            "positive_pairs": int(same.sum())}
