"""Side-by-side timing on a shared, noisy CPU: candidates take turns, medians are compared."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed_turns(candidates: dict[str, Callable[[], object]], rounds: int,
                turn_seconds: float = 0.0, pause: float = 0.0, warmup: int = 2
                ) -> dict[str, list[float]]:
    """Seconds per call of each candidate, one value per turn.

    Each round gives every candidate one turn, so a burst of load from another process hits all
    of them alike and the ratios stay meaningful even when absolute times wobble. A turn repeats
    the call until ``turn_seconds`` have passed (at least once) and records the mean; ``pause``
    between turns lets the previous candidate's spinning worker threads go to sleep, so they do
    not steal the cores from the next one.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    per_call: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            if pause:
                time.sleep(pause)
            calls, started = 0, time.perf_counter()
            while True:
                fn()
                calls += 1
                elapsed = time.perf_counter() - started
                if elapsed >= turn_seconds:
                    break
            per_call[name].append(elapsed / calls)
    return per_call


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int,
                turn_seconds: float = 0.0, pause: float = 0.0, warmup: int = 2
                ) -> dict[str, float]:
    """Median seconds per call of each candidate, timed in turns (``timed_turns``)."""
    turns = timed_turns(candidates, rounds, turn_seconds, pause, warmup)
    return {name: statistics.median(values) for name, values in turns.items()}
