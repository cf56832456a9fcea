"""A worker's health, as its /health endpoint, its heartbeat and its logs report it.

Each dependency (``redis``, ``kafka``) is ``ok`` or failing since a moment, with the last error;
so are the worker's own states that no exception reports: ``pipeline`` (a batch has not moved for
longer than the stall bound) and ``restarts`` (a pool started this process again after crashes in
a row). The worker is ``ok`` when all are, ``degraded`` while one fails (it keeps its batch,
retries and commits nothing), ``stopping`` after SIGTERM.
"""

from __future__ import annotations

import threading
import time

# A process that has run this long is healthy again: the pool forgets its crashes, and a child
# started after crashes in a row stops reporting the crash loop.
HEALTHY_RUN_S = 60.0


class Health:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failing: dict[str, tuple[float, str, int]] = {}  # name -> (since, error, attempts)
        self._stopping = False

    def failing(self, component: str, error: str, attempt: bool = True) -> None:
        """``component`` fails with ``error`` (since its first report); ``attempt``: this report
        is one more failed attempt (a retry), not a state seen again."""
        with self._lock:
            since, _, attempts = self._failing.get(component, (time.time(), "", 0))
            self._failing[component] = (since, error, attempts + attempt)

    def ok(self, component: str) -> None:
        if component in self._failing:
            with self._lock:
                self._failing.pop(component, None)

    def stopping(self) -> None:
        self._stopping = True

    @property
    def healthy(self) -> bool:
        return not self._failing

    def snapshot(self) -> dict:
        with self._lock:
            failing = {name: {"since": round(since, 3), "error": error, "attempts": attempts,
                              "for_s": round(time.time() - since, 1)}
                       for name, (since, error, attempts) in self._failing.items()}
        status = "stopping" if self._stopping else ("degraded" if failing else "ok")
        return {"status": status, "failing": failing}
