"""Vectors and cards for the index tests: clustered like real embeddings, not uniform noise."""

from __future__ import annotations

import numpy as np

from twinstream.modelcard import ModelCard
from twinstream.preprocess import Preprocessing


def card(version: str = "m1", dim: int = 24, threshold: float | None = 0.8) -> ModelCard:
    return ModelCard(embedding_dim=dim, preprocessing=Preprocessing(), threshold=threshold,
                     version=version)


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int = 24, clusters: int = 10, spread: float = 0.35,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around ``clusters`` random centres, and each vector's cluster."""
    rng = np.random.default_rng(seed)
    centres = normalise(rng.normal(size=(clusters, dim)))
    labels = rng.integers(0, clusters, size=n)
    noise = rng.normal(size=(n, dim)) * spread / np.sqrt(dim)
    return normalise(centres[labels] + noise), labels


def balanced_classes(classes: int, per_class: int, dim: int, spread: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` unit vectors around each of ``classes`` random centres, labels in order:
    a stand-in for a trained encoder's output on a labelled set."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    points = centres[labels] / np.linalg.norm(centres[labels], axis=1, keepdims=True)
    points = points + rng.normal(scale=spread / np.sqrt(dim), size=points.shape)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32), labels


def exact_top_k(data: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    scores = data @ query
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]
