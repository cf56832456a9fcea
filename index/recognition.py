"""One-shot recognition and verification on top of the vector index.

"Who is this, or unknown?": the best match's label when its similarity reaches the threshold (the
model card's same/different threshold unless one is given), else unknown. Enrolment is an upsert
of one reference image with its label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index.store import Hit, VectorIndex
from twinstream.errors import InputError

DEFAULT_THRESHOLD = 0.5  # only when neither the caller nor the model card gives one


@dataclass(frozen=True)
class Recognition:
    label: str | None  # None: unknown
    score: float  # similarity of the best match, -1..1 (-1 when the index is empty)
    threshold: float
    best: Hit | None
    hits: list[Hit] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return self.label is not None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label if self.known else "unknown", "known": self.known,
                "score": self.score, "threshold": self.threshold,
                "best": self.best.to_dict() if self.best else None,
                "hits": [h.to_dict() for h in self.hits]}


@dataclass(frozen=True)
class Verification:
    score: float
    threshold: float

    @property
    def same(self) -> bool:
        return self.score >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "threshold": self.threshold, "same": self.same}


def resolve_threshold(index_threshold: float | None, override: float | None) -> float:
    threshold = override if override is not None else index_threshold
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    if not -1.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    return threshold


def recognize(index: VectorIndex, vector: np.ndarray, threshold: float | None = None,
              k: int = 5) -> Recognition:
    """The label of the nearest labelled reference, or unknown below the threshold."""
    cut = resolve_threshold(index.info.threshold, threshold)
    hits = index.search(vector, k=k)
    labelled = [h for h in hits if h.attributes.get("label")]
    best = labelled[0] if labelled else None
    score = best.score if best else -1.0
    label = str(best.attributes["label"]) if best and score >= cut else None
    return Recognition(label, score, cut, best, hits)


def verify(a: np.ndarray, b: np.ndarray, threshold: float) -> Verification:
    """Same or different, from the cosine similarity of two L2-normalised embeddings."""
    return Verification(float(np.dot(np.asarray(a, np.float32), np.asarray(b, np.float32))),
                        threshold)


def enroll(index: VectorIndex, image_id: str, vector: np.ndarray, label: str,
           attributes: dict[str, Any] | None = None) -> None:
    """Add one reference image of ``label`` (idempotent per id)."""
    if not label or not label.strip():
        raise InputError("enrol needs a non-empty --label")
    index.upsert([(image_id, vector, {**(attributes or {}), "label": label.strip(),
                                      "source": (attributes or {}).get("source", "enroll")})])
