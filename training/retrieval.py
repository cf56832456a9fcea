"""Retrieval metrics over a labelled set of embeddings: every item queries all the others.

- precision@1: the nearest other item has the query's class.
- recall@K: at least one of the K nearest others has the query's class (the "Recall@K" of the
  metric-learning literature, e.g. Song et al. 2016).
- MAP@R (Musgrave, Belongie & Lim 2020): with R the number of other items of the query's class,
  the mean over the top R of precision@i at each relevant position i, divided by R.

Queries whose class has no other item are left out. Similarity is cosine (embeddings are unit).
"""

from __future__ import annotations

import numpy as np


def ranked_relevance(embeddings: np.ndarray, labels: np.ndarray, depth: int,
                     chunk: int = 1024) -> np.ndarray:
    """``[N, depth]``: 1 where the i-th nearest other item shares the query's class."""
    n = len(labels)
    depth = min(depth, n - 1)
    out = np.zeros((n, depth), dtype=bool)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sims = embeddings[start:stop] @ embeddings.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not itself
        if depth < n - 1:
            top = np.argpartition(-sims, depth, axis=1)[:, :depth]
            order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
            nearest = np.take_along_axis(top, order, axis=1)
        else:
            nearest = np.argsort(-sims, axis=1, kind="stable")[:, :depth]
        out[start:stop] = labels[nearest] == labels[start:stop, None]
    return out


def map_at_r(relevance: np.ndarray, r: np.ndarray) -> np.ndarray:
    """MAP@R of each query from its ranked relevance ``[Q, depth >= max(r)]`` and its R."""
    positions = np.arange(1, relevance.shape[1] + 1)
    within_r = positions[None, :] <= r[:, None]
    precision_at_i = np.cumsum(relevance, axis=1) / positions
    return np.sum(precision_at_i * relevance * within_r, axis=1) / r


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray,
                      ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    classes = np.unique(labels, return_inverse=True)[1]
    r = np.bincount(classes)[classes] - 1  # other items of the query's class
    usable = r > 0
    if not usable.any():
        raise ValueError("retrieval metrics need a class with at least 2 items")
    depth = int(max(r.max(), max(ks)))
    rel = ranked_relevance(embeddings, labels, depth)[usable]
    r = r[usable]
    result = {"queries": int(usable.sum()), "precision@1": float(rel[:, 0].mean()),
              "map@r": float(map_at_r(rel, r).mean())}
    for k in ks:
        result[f"recall@{k}"] = float(rel[:, :k].any(axis=1).mean())
    return result
