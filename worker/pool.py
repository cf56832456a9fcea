"""Run N worker processes (consumers of one group), restart the ones that crash, stop them
together.

A child that exits with a user-error code (bad settings 2, model 3, index/model mismatch 4) is
not restarted: it would fail the same way again, so the pool stops and exits with that code. One
that crashes (killed, out of memory, a bug) is restarted after a backoff that doubles with each
crash in a row (1 s, 2 s, 4 s ... 30 s) and resets once a child has run for a minute.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import time
from dataclasses import dataclass, replace

from twinstream.errors import (
    ConfigError,
    IndexMismatchError,
    InputError,
    ModelError,
    NotFoundError,
    TwinstreamError,
)
from twinstream.settings import Settings
from twinstream.supervise import die_with_parent
from worker.health import HEALTHY_RUN_S
from worker.logs import configure, event

log = logging.getLogger("twinstream.worker")

# A child that exits with a user-error code would fail the same way again: not restarted.
FATAL_EXIT_CODES = frozenset(cls.exit_code for cls in (ConfigError, InputError, ModelError,
                                                       IndexMismatchError, NotFoundError))
RESTART_FIRST_S = 1.0
RESTART_CAP_S = 30.0
KILL_GRACE_S = 10.0


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def child_settings(settings: Settings, index: int, processes: int) -> Settings:
    """Share the cores among the processes, and give each its own metrics port."""
    threads = settings.model.threads or max(1, cpu_count() // processes)
    port = settings.worker.metrics_port + index if settings.worker.metrics_port else 0
    return replace(settings, model=replace(settings.model, threads=threads),
                   worker=replace(settings.worker, metrics_port=port))


def run_worker(settings: Settings, idle_exit_s: float | None = None, reindex: bool = False,
               quiet: bool = False, signals=(signal.SIGTERM, signal.SIGINT),
               crashes: int = 0, last_exit_code: int | None = None) -> dict:
    """One worker in this process until stopped by ``signals`` (or idle); returns its counts.
    ``crashes``: how many times in a row the pool saw this slot crash before starting it."""
    from worker.consumer import Worker, default_worker_id

    worker_id = default_worker_id()
    configure(settings.worker.log_format, worker_id, quiet)
    worker = Worker(settings, worker_id, reindex=reindex, crashes=crashes,
                    last_exit_code=last_exit_code)
    worker.install_signal_handlers(signals)
    return worker.run(idle_exit_s).to_dict()


def _child(settings: Settings, idle_exit_s, reindex: bool, quiet: bool, results,
           crashes: int = 0, last_exit_code: int | None = None,
           parent_pid: int | None = None) -> None:
    # Die with the pool: a SIGKILLed parent must not leave its children consuming as orphans
    # (a supervisor restarting the pool would double the consumers). SIGTERM, so the child still
    # writes and commits what it holds. The parent may already be gone by now: check.
    if parent_pid is not None:
        die_with_parent(signal.SIGTERM)
        if os.getppid() != parent_pid:
            raise SystemExit(0)
    # A terminal's Ctrl-C reaches the whole process group; the parent turns it into one SIGTERM
    # per child, so a child that also took the SIGINT would count two signals and hurry.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stats = run_worker(settings, idle_exit_s, reindex, quiet, signals=(signal.SIGTERM,),
                           crashes=crashes, last_exit_code=last_exit_code)
    except TwinstreamError as exc:
        event(log, exc.message, logging.ERROR, exit_code=exc.exit_code)
        raise SystemExit(exc.exit_code) from exc
    results.put(stats)


@dataclass
class _Slot:
    index: int
    process: mp.Process | None = None
    started: float = 0.0
    crashes: int = 0
    last_exit_code: int | None = None
    restart_at: float = 0.0
    done: bool = False


class WorkerPool:
    def __init__(self, settings: Settings, processes: int, idle_exit_s: float | None = None,
                 reindex: bool = False, quiet: bool = False):
        self.settings = settings
        self.processes = processes
        self.idle_exit_s = idle_exit_s
        self.reindex = reindex
        self.quiet = quiet
        self._ctx = mp.get_context("spawn")  # no inherited sockets or threads from the parent
        self._results = self._ctx.Queue()
        self.slots = [_Slot(i) for i in range(processes)]
        self.stopping = False
        self.exit_code = 0
        self.restarts = 0
        self._stop_requested_at = 0.0

    def _spawn(self, slot: _Slot) -> None:
        s = child_settings(self.settings, slot.index, self.processes)
        slot.process = self._ctx.Process(
            target=_child, args=(s, self.idle_exit_s, self.reindex, self.quiet, self._results,
                                 slot.crashes, slot.last_exit_code, os.getpid()),
            name=f"twinstream-worker-{slot.index}")
        slot.process.start()
        slot.started = time.monotonic()

    def start(self) -> WorkerPool:
        for slot in self.slots:
            self._spawn(slot)
        return self

    def stop(self) -> None:
        """Ask every child to finish its batches, commit and leave (SIGTERM)."""
        if not self.stopping:
            self.stopping = True
            self._stop_requested_at = time.monotonic()
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.terminate()

    @property
    def finished(self) -> bool:
        return all(slot.done for slot in self.slots)

    def pids(self) -> list[int]:
        return [s.process.pid for s in self.slots if s.process is not None and s.process.pid]

    def supervise(self) -> None:
        """One round: notice exits, restart crashes when their backoff is over."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.done:
                continue
            if slot.process is None:
                if self.stopping:
                    slot.done = True
                elif now >= slot.restart_at:
                    self.restarts += 1
                    event(log, "restarting worker process", slot=slot.index,
                          crashes=slot.crashes)
                    self._spawn(slot)
                continue
            if slot.process.is_alive():
                continue
            code = slot.process.exitcode
            slot.process.join()
            slot.process = None
            if code in FATAL_EXIT_CODES:
                slot.done = True
                self.exit_code = self.exit_code if self.exit_code in FATAL_EXIT_CODES else code
                self.stop()
            elif self.stopping or code == 0:
                slot.done = True
                # A child that the pool itself stopped after a fatal exit does not hide it.
                if self.exit_code not in FATAL_EXIT_CODES:
                    self.exit_code = max(self.exit_code, abs(code or 0))
            else:
                slot.crashes = 1 if now - slot.started > HEALTHY_RUN_S else slot.crashes + 1
                slot.last_exit_code = code
                delay = min(RESTART_CAP_S, RESTART_FIRST_S * 2 ** (slot.crashes - 1))
                slot.restart_at = now + delay
                event(log, "worker process crashed", logging.WARNING, slot=slot.index,
                      exit_code=code, restart_in_s=delay)
        if self.stopping and now - self._stop_requested_at > (
                self.settings.worker.shutdown_timeout_s + KILL_GRACE_S):
            for slot in self.slots:  # a child that ignores SIGTERM this long is stuck
                if slot.process is not None and slot.process.is_alive():
                    slot.process.kill()

    def results(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out


def total(results: list[dict]) -> dict:
    out: dict = {"processes": len(results)}
    for r in results:
        for key, value in r.items():
            if isinstance(value, (int, float)):
                out[key] = out.get(key, 0) + value
    return out


def run_pool(settings: Settings, processes: int, idle_exit_s: float | None = None,
             reindex: bool = False, quiet: bool = False, results: list | None = None) -> int:
    """Start ``processes`` workers; SIGTERM/SIGINT stop them; returns the worst exit code.

    The counts each child reports when it ends are appended to ``results`` when given."""
    configure(settings.worker.log_format, f"pool-{os.getpid()}", quiet)
    pool = WorkerPool(settings, processes, idle_exit_s, reindex, quiet).start()

    def on_signal(_signum, _frame):
        pool.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not pool.finished:
            pool.supervise()
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        pool.stop()
    if results is not None:
        results.extend(pool.results())
    return pool.exit_code
