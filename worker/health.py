"""A worker's health, as its /health endpoint, its heartbeat and its logs report it.

Each dependency (``redis``, ``kafka``) is ``ok`` or failing since a moment, with the last error.
The worker is ``ok`` when all are, ``degraded`` while one fails (it keeps its batch, retries and
commits nothing), ``stopping`` after SIGTERM.
"""

from __future__ import annotations

import threading
import time


class Health:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failing: dict[str, tuple[float, str, int]] = {}  # name -> (since, error, attempts)
        self._stopping = False

    def failing(self, component: str, error: str) -> None:
        with self._lock:
            since, _, attempts = self._failing.get(component, (time.time(), "", 0))
            self._failing[component] = (since, error, attempts + 1)

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
