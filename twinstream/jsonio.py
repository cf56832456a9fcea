"""JSON for people's tools: numpy numbers, paths, sets and dataclasses with ``to_dict`` become
plain JSON, and non-finite floats become ``null`` (JSON has no NaN). Used by the CLI's ``--json``
and by the reports training writes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; null is what parsers accept
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(data: Any, indent: int | None = None) -> str:
    return json.dumps(data, default=_jsonable, indent=indent, sort_keys=False)
