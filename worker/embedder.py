"""Embedder step: one onnxruntime call for every decoded item of a batch."""

from __future__ import annotations

import numpy as np

from twinstream.runtime import Encoder
from worker.batch import Batch, Item


class Embedder:
    name = "embed"

    def __init__(self, encoder: Encoder):
        self.encoder = encoder

    def __call__(self, batch: Batch) -> None:
        items = [item for item in batch.items if item.wants_vector]
        if not items:
            return
        try:
            vectors = self.encoder.embed_arrays(np.stack([item.array for item in items]))
        except Exception:
            # One input the model chokes on must not sink its neighbours: find it alone.
            self._one_by_one(items)
            return
        self._assign_all(items, vectors)

    def _one_by_one(self, items: list[Item]) -> None:
        for item in items:
            try:
                vectors = self.encoder.embed_arrays(item.array[None])
            except Exception as exc:
                item.fail("embed", f"onnxruntime failed: {str(exc).splitlines()[0][:200]}")
                continue
            self._assign_all([item], vectors)

    @staticmethod
    def _assign_all(items: list[Item], vectors: np.ndarray) -> None:
        # One check for the whole batch: per row, numpy's call overhead would cost more than
        # the check itself.
        usable = np.isfinite(vectors).all(axis=1) & vectors.any(axis=1)
        for item, vector, ok in zip(items, vectors, usable.tolist(), strict=True):
            if not ok:
                item.fail("embed", "the model gave a NaN, infinite or all-zero embedding")
                continue
            item.vector = vector
            item.array = None  # the pixels are not needed any more; keeps in-flight memory small
