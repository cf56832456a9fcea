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
        for item, vector in zip(items, vectors, strict=True):
            self._assign(item, vector)

    def _one_by_one(self, items: list[Item]) -> None:
        for item in items:
            try:
                (vector,) = self.encoder.embed_arrays(item.array[None])
            except Exception as exc:
                item.fail("embed", f"onnxruntime failed: {str(exc).splitlines()[0][:200]}")
                continue
            self._assign(item, vector)

    @staticmethod
    def _assign(item: Item, vector: np.ndarray) -> None:
        if not np.all(np.isfinite(vector)) or not np.any(vector):
            item.fail("embed", "the model gave a NaN, infinite or all-zero embedding")
            return
        item.vector = vector
        item.array = None  # the pixels are not needed any more; keeps in-flight memory small
