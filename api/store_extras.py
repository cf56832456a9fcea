"""Two reads the API needs that ``index.store.VectorIndex`` may not offer (yet).

- ``search(index, vector, k, filter)``: passes ``filter=`` to ``VectorIndex.search`` when the
  store accepts it (the index work adds it); until then a filtered query is sent as
  ``VSIM ... FILTER expr`` here, with the store's score convention (cosine in [-1, 1]).
- ``attributes(index, id)``: ``VGETATTR`` of one element.

Both use only the public ``client``/``vset``/``info`` of the index, so they keep working when the
store grows; once it offers the same, these become one-line delegations.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from typing import Any

import numpy as np

from index.store import Hit, VectorIndex


@functools.cache
def store_supports_filter() -> bool:
    return "filter" in inspect.signature(VectorIndex.search).parameters


def search(index: VectorIndex, vector: np.ndarray, k: int, filter: str | None = None
           ) -> list[Hit]:
    if filter is None:
        return index.search(vector, k=k)
    if store_supports_filter():
        return index.search(vector, k=k, filter=filter)
    v = np.asarray(vector, dtype="<f4").reshape(-1)
    raw = index.client.execute_command(
        "VSIM", index.vset, "FP32", v.tobytes(), "WITHSCORES", "WITHATTRIBS", "COUNT", k,
        "FILTER", filter)
    return [_hit(element, value) for element, value in _pairs(raw)]


def attributes(index: VectorIndex, image_id: str) -> dict[str, Any] | None:
    """The JSON attributes of ``image_id``, {} when it has none, None when it is not indexed."""
    raw = index.client.execute_command("VGETATTR", index.vset, image_id)
    if raw is None:
        return {} if index.exists(image_id) else None
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {"raw": raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _pairs(raw: Any) -> list[tuple[Any, Any]]:
    if isinstance(raw, dict):  # redis-py parses WITHSCORES WITHATTRIBS into a dict
        return list(raw.items())
    return list(zip(raw[0::3], zip(raw[1::3], raw[2::3], strict=True), strict=True))


def _hit(element: Any, value: Any) -> Hit:
    score, attrs = value if isinstance(value, (list, tuple)) else (value, None)
    image_id = element.decode() if isinstance(element, bytes) else str(element)
    cosine = 2.0 * float(score) - 1.0  # VSIM reports (1 + cos) / 2
    try:
        parsed = json.loads(attrs) if attrs else {}
    except ValueError:
        parsed = {}
    return Hit(image_id, cosine if math.isfinite(cosine) else -1.0,
               parsed if isinstance(parsed, dict) else {})
