"""Similarity queries as small objects that build their ``VSIM`` command and read its reply.

Pure code (no Redis here), so every option is unit-tested: validation, the command's arguments,
reply parsing (RESP2 flat lists and the dicts redis-py builds), score conversion and the merge of
several shards' top-k lists.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from index.filters import parse_filter
from twinstream.errors import InputError

MAX_K = 10_000
MAX_EF = 1_000_000  # Redis refuses larger EF values


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity, -1..1
    attributes: dict[str, Any]

    def to_dict(self) -> dict:
        return {"id": self.id, "score": self.score, "attributes": self.attributes}


def _positive(name: str, value: int | None, upper: int, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not 1 <= value <= upper:
        raise InputError(f"{name} must be a whole number between 1 and {upper}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SearchOptions:
    """How one search runs. ``filter`` is already checked and rendered (``index.filters``)."""

    k: int = 10
    filter: str | None = None
    ef: int | None = None  # HNSW exploration factor; None: Redis's default (100, at least k)
    filter_ef: int | None = None  # nodes a filtered search may visit; None: Redis's 100 * k
    exact: bool = False  # TRUTH: a linear scan, the exact top-k (for checking recall)

    @classmethod
    def build(cls, k: int = 10, filter: str | None = None, ef: int | None = None,
              filter_ef: int | None = None, exact: bool = False) -> SearchOptions:
        """Checked options; a malformed filter or an out-of-range number is an ``InputError``."""
        k = _positive("k", k, MAX_K, optional=False)
        return cls(k, parse_filter(filter), _positive("ef", ef, MAX_EF),
                   _positive("filter_ef", filter_ef, 10**9), bool(exact))

    def with_k(self, k: int) -> SearchOptions:
        return SearchOptions(k, self.filter, self.ef, self.filter_ef, self.exact)

    def command(self, key: str, query: Sequence[Any]) -> list[Any]:
        """``VSIM key <query> ...``; ``query`` is ``("FP32", blob)`` or ``("ELE", id)``."""
        args: list[Any] = ["VSIM", key, *query, "WITHSCORES", "WITHATTRIBS", "COUNT", self.k]
        if self.ef is not None:
            args += ["EF", self.ef]
        if self.filter is not None:
            args += ["FILTER", self.filter]
            if self.filter_ef is not None:
                args += ["FILTER-EF", self.filter_ef]
        if self.exact:
            args.append("TRUTH")
        return args


def parse_hits(raw: Any) -> list[Hit]:
    """A ``VSIM ... WITHSCORES WITHATTRIBS`` reply as hits, best first."""
    if not raw:
        return []
    if isinstance(raw, dict):  # redis-py's parsing: {element: [score, attributes]}
        pairs = list(raw.items())
    else:  # RESP2 flat list: element, score, attributes, ...
        pairs = list(zip(raw[0::3], zip(raw[1::3], raw[2::3], strict=True), strict=True))
    return [_hit(element, value) for element, value in pairs]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _hit(element: Any, value: Any) -> Hit:
    score, attrs = value if isinstance(value, (list, tuple)) else (value, None)
    # Redis reports (1 + cos) / 2 in [0, 1]; we speak cosine.
    cosine = 2.0 * float(score) - 1.0
    cosine = min(1.0, max(-1.0, cosine)) if math.isfinite(cosine) else -1.0
    return Hit(_text(element), cosine, parse_attributes(attrs))


def parse_attributes(raw: Any) -> dict[str, Any]:
    if raw is None or raw == b"" or raw == "":
        return {}
    try:
        value = json.loads(_text(raw))
    except ValueError:
        return {}  # written by someone else; a search should not fail over it
    return value if isinstance(value, dict) else {}


def merge_hits(per_shard: Iterable[list[Hit]], k: int, exclude: str | None = None) -> list[Hit]:
    """The best ``k`` of several shards' lists (ties broken by id, so the order is stable)."""
    merged = [h for hits in per_shard for h in hits if h.id != exclude]
    merged.sort(key=lambda h: (-h.score, h.id))
    return merged[:k]
