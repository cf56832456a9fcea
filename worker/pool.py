"""Run N worker processes (consumers of one group) and stop them together."""

from __future__ import annotations

import multiprocessing as mp
import signal
import time

from twinstream.settings import Settings
from worker.consumer import Worker


def _child(settings: Settings, worker_id: str, idle_exit_s: float | None) -> None:
    worker = Worker(settings, worker_id)
    worker.install_signal_handlers()
    worker.run(idle_exit_s)


def run_pool(settings: Settings, processes: int, idle_exit_s: float | None = None) -> int:
    """Start ``processes`` workers; SIGTERM/SIGINT are forwarded; returns the worst exit code."""
    if processes == 1:
        worker = Worker(settings)
        worker.install_signal_handlers()
        worker.run(idle_exit_s)
        return 0
    ctx = mp.get_context("spawn")  # no inherited sockets or threads from the parent
    children = [ctx.Process(target=_child, args=(settings, f"worker-{i}", idle_exit_s),
                            name=f"twinstream-worker-{i}") for i in range(processes)]
    for child in children:
        child.start()

    def forward(_signum, _frame):  # each child drains its batch, commits and leaves on SIGTERM
        for child in children:
            if child.is_alive():
                child.terminate()

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while any(child.is_alive() for child in children):
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return max((child.exitcode or 0) for child in children)
