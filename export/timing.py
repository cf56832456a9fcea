"""Side-by-side timing on a shared, noisy CPU: candidates take turns, medians are compared."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(candidates: dict[str, Callable[[], object]], reps: int, warmup: int = 2,
                min_seconds: float = 0.0) -> dict[str, float]:
    """Median seconds per call of each candidate.

    Each round calls every candidate once, so a burst of load from another process hits all of
    them alike and the ratios stay meaningful even when the absolute times wobble. Rounds go on
    until ``reps`` are done and at least ``min_seconds`` have passed.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    started = time.perf_counter()
    rounds = 0
    while rounds < reps or time.perf_counter() - started < min_seconds:
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(values) for name, values in times.items()}
