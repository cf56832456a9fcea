"""One-shot recognition and verification on top of the vector index.

"Who is this, or unknown?": the enrolled identity whose prototype (the normalised mean of its
references, ``index/identities.py``) is most similar to the probe, when that similarity reaches
the recognition threshold, else unknown. The threshold depends on how many identities are
enrolled: a stranger compared with N identities has N chances to match one, so the model card
holds the cut that keeps the share of strangers accepted (FPIR) at a target for each gallery
size (``twinstream.calibration``); a given ``threshold`` overrides it. Every answer says which
threshold it used and why, and a calibrated probability beside the raw cosine when the card has
a calibration. Verification of two images keeps the pair threshold: one comparison, one chance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index.identities import Identities, IdentityHit
from index.store import VectorIndex
from twinstream.calibration import (
    DEFAULT_TARGET_FPIR,
    calibrated_probability,
    check_threshold,
    recognition_threshold,
)
from twinstream.errors import InputError

DEFAULT_THRESHOLD = 0.5  # only when neither the caller nor the model card gives one


def probability_of(card: Any, score: float | None) -> float | None:
    """P(same identity) for one cosine, or None without a calibration in the card."""
    if score is None:
        return None
    p = calibrated_probability(card, score)
    return None if p is None else round(float(p), 6)


@dataclass(frozen=True)
class Recognition:
    label: str | None  # None: unknown
    score: float  # cosine of the best identity's prototype, -1..1 (-1 when none is enrolled)
    threshold: float
    best: IdentityHit | None
    hits: list[IdentityHit] = field(default_factory=list)
    probability: float | None = None  # P(same identity) of the best match, when calibrated
    threshold_reason: str = ""
    gallery_size: int = 0  # identities enrolled when the threshold was chosen
    warning: str | None = None  # e.g. an older model card without recognition thresholds
    probabilities: list[float | None] = field(default_factory=list)  # of each hit

    @property
    def known(self) -> bool:
        return self.label is not None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label if self.known else "unknown", "known": self.known,
                "score": self.score, "probability": self.probability,
                "threshold": self.threshold, "threshold_reason": self.threshold_reason,
                "gallery_size": self.gallery_size, "warning": self.warning,
                "best": _hit_dict(self.best, self.probability) if self.best else None,
                "hits": [_hit_dict(h, p) for h, p in zip(self.hits, self.probabilities,
                                                          strict=True)]}


def _hit_dict(hit: IdentityHit, probability: float | None) -> dict[str, Any]:
    return {**hit.identity.to_dict(), "score": hit.score, "probability": probability}


@dataclass(frozen=True)
class Verification:
    score: float
    threshold: float
    probability: float | None = None

    @property
    def same(self) -> bool:
        return self.score >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "probability": self.probability,
                "threshold": self.threshold, "same": self.same}


def resolve_threshold(card_threshold: float | None, override: float | None) -> float:
    """The pair (verification) threshold: the given one, else the card's."""
    threshold = override if override is not None else card_threshold
    return check_threshold(DEFAULT_THRESHOLD if threshold is None else threshold)


def recognize(index: VectorIndex, vector: np.ndarray, threshold: float | None = None,
              k: int = 5, *, target_fpir: float = DEFAULT_TARGET_FPIR,
              filter: str | None = None) -> Recognition:
    """The identity nearest to ``vector``, or unknown below the threshold.

    Without ``threshold``, the cut comes from the model card for the number of identities
    enrolled now, at ``target_fpir``; ``filter`` narrows the identities (an attribute
    expression on ``.label``, ``.references``).
    """
    identities = Identities(index)
    size = identities.count()
    if threshold is not None:
        cut = check_threshold(threshold)
        reason, warning = f"cosine {cut:.4f}: given with the request", None
    else:
        choice = recognition_threshold(index.info, size, target_fpir)
        cut, reason, warning = choice.threshold, choice.reason, choice.warning
    hits = identities.search(vector, k=k, filter=filter)
    best = hits[0] if hits else None
    score = best.score if best else -1.0
    label = best.identity.label if best and score >= cut else None
    probabilities = [probability_of(index.info, h.score) for h in hits]
    return Recognition(label, score, cut, best, hits, probabilities[0] if hits else None,
                       reason, size, warning, probabilities)


def _unit(vector: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    norm = np.linalg.norm(v)
    if not np.all(np.isfinite(v)) or norm == 0:
        raise InputError(f"{name} is not a usable embedding (NaN, infinity or all zeros)")
    return v / norm


def verify(a: np.ndarray, b: np.ndarray, threshold: float, card: Any = None) -> Verification:
    """Same or different, from the cosine similarity of two embeddings; with ``card``, the
    calibrated probability that they show the same identity too."""
    ua, ub = _unit(a, "first vector"), _unit(b, "second vector")
    if ua.shape != ub.shape:
        raise InputError(f"the two embeddings differ in dimension ({ua.size} vs {ub.size})")
    score = float(np.clip(ua @ ub, -1.0, 1.0))
    return Verification(score, check_threshold(threshold), probability_of(card, score))


def enroll(index: VectorIndex, image_id: str, vector: np.ndarray, label: str,
           attributes: dict[str, Any] | None = None) -> str:
    """Add one reference image of ``label`` (idempotent per id): an element of the index and
    a reference of the identity, whose prototype is recomputed. Returns the id."""
    if not isinstance(label, str) or not label.strip():
        raise InputError("enrol needs a non-empty --label")
    label = label.strip()
    existing = index.attributes(image_id)
    if existing is None or existing.get("label") != label:  # the same image again: a no-op
        attrs = {"source": "enroll", **(attributes or {}), "label": label,
                 "model_version": index.info.version}
        attrs.setdefault("ingested_at", round(time.time(), 3))
        index.upsert([(image_id, vector, attrs)])
    Identities(index).add(label, image_id, vector)
    return image_id
