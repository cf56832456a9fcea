"""One-shot recognition and verification on top of the vector index.

"Who is this, or unknown?": the nearest *labelled* reference's label when its similarity reaches
the threshold (the model card's same/different threshold unless one is given), else unknown.
Enrolment is an upsert of one reference image with its label, so a new person (class) is
recognisable from one image, without retraining.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index.filters import parse_filter
from index.store import Hit, VectorIndex
from twinstream.errors import InputError

DEFAULT_THRESHOLD = 0.5  # only when neither the caller nor the model card gives one
LABELLED = ".label"  # a filter true for elements with a non-empty label


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
              k: int = 5, *, filter: str | None = None, ef: int | None = None) -> Recognition:
    """The label of the nearest labelled reference, or unknown below the threshold.

    Only labelled elements are searched (unlabelled images in the same index cannot hide a
    reference); ``filter`` narrows the references further, e.g. ``.source == "enroll"``.
    """
    cut = resolve_threshold(index.info.threshold, threshold)
    extra = parse_filter(filter)
    hits = index.search(vector, k=k, ef=ef,
                        filter=f"{LABELLED} and {extra}" if extra else LABELLED)
    best = hits[0] if hits else None
    score = best.score if best else -1.0
    label = str(best.attributes["label"]) if best and score >= cut else None
    return Recognition(label, score, cut, best, hits)


def _unit(vector: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    norm = np.linalg.norm(v)
    if not np.all(np.isfinite(v)) or norm == 0:
        raise InputError(f"{name} is not a usable embedding (NaN, infinity or all zeros)")
    return v / norm


def verify(a: np.ndarray, b: np.ndarray, threshold: float) -> Verification:
    """Same or different, from the cosine similarity of two embeddings."""
    ua, ub = _unit(a, "first vector"), _unit(b, "second vector")
    if ua.shape != ub.shape:
        raise InputError(f"the two embeddings differ in dimension ({ua.size} vs {ub.size})")
    return Verification(float(np.clip(ua @ ub, -1.0, 1.0)), resolve_threshold(threshold, None))


def enroll(index: VectorIndex, image_id: str, vector: np.ndarray, label: str,
           attributes: dict[str, Any] | None = None) -> str:
    """Add one reference image of ``label`` (idempotent per id); returns the id."""
    if not isinstance(label, str) or not label.strip():
        raise InputError("enrol needs a non-empty --label")
    attrs = {"source": "enroll", **(attributes or {}), "label": label.strip(),
             "model_version": index.info.version}
    attrs.setdefault("ingested_at", round(time.time(), 3))
    index.upsert([(image_id, vector, attrs)])
    return image_id
