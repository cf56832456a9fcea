"""Retrying what the world breaks (Redis restarting, a broker election): exponential backoff with
full jitter, so many workers that lost the same server do not return to it in lockstep."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class GaveUp(Exception):
    """Retrying stopped because the caller said so (shutdown deadline passed)."""


@dataclass(frozen=True)
class Backoff:
    first_s: float = 0.1
    cap_s: float = 5.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Attempt 1, 2, ... -> a delay drawn uniformly from [0, min(cap, first * 2**(n-1))]."""
        ceiling = min(self.cap_s, self.first_s * 2 ** min(attempt - 1, 30))
        return (rng or random).uniform(0, ceiling)


def retry(action: Callable[[], T], retryable: Callable[[Exception], bool],
          give_up: threading.Event, backoff: Backoff = Backoff(),
          on_failure: Callable[[Exception, int, float], None] | None = None) -> T:
    """Run ``action`` until it succeeds; retry the errors ``retryable`` accepts, forever, unless
    ``give_up`` is set (then raise ``GaveUp``). Other errors propagate at once."""
    attempt = 0
    while True:
        if give_up.is_set():
            raise GaveUp()
        try:
            return action()
        except Exception as exc:
            if not retryable(exc):
                raise
            attempt += 1
            delay = backoff.delay(attempt)
            if on_failure is not None:
                on_failure(exc, attempt, delay)
            if give_up.wait(delay):
                raise GaveUp() from exc
