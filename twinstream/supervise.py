"""Supervision of child processes: start one, wait until it answers, stop it, restart it.

No orphans, however the caller ends: each server runs in its own process group (so stopping it
stops anything it spawned), is killed by the kernel if the Python process that started it dies
(``PR_SET_PDEATHSIG``, Linux), and is stopped by an ``atexit`` hook and a finalizer otherwise.
``Restarter`` brings a server that died back on the same port and files, with a backoff.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from twinstream.errors import StackStartError

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1

_live: weakref.WeakSet[ServiceProcess] = weakref.WeakSet()
_live_lock = threading.Lock()


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only).

    Called in a child between fork and exec, or first thing in a spawned worker. Returns whether
    the request was accepted (False off Linux: the parent's own clean-up still applies)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return False
    return libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0


def _die_with_parent() -> None:  # preexec_fn: no arguments
    die_with_parent()


@dataclass(eq=False)  # identity semantics: processes are tracked in a WeakSet
class ServiceProcess:
    """One server process in its own process group, with its log file."""

    name: str
    port: int
    argv: list[str]
    log_path: Path
    health: Callable[[], None]  # raises OSError / ConnectionError until the server answers
    env: Mapping[str, str] | None = None  # None: this process's environment
    popen: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> ServiceProcess:
        try:
            with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
                self.popen = subprocess.Popen(
                    self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, preexec_fn=_die_with_parent,
                    env=None if self.env is None else dict(self.env))
        except OSError as exc:
            raise StackStartError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        with _live_lock:
            _live.add(self)
        self._wait_healthy(timeout_s)
        return self

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise StackStartError(
                    f"{self.name} exited with code {self.popen.returncode} while starting; "
                    f"log tail:\n{self.log_tail()}")
            try:
                self.health()
                return
            except (OSError, ConnectionError) as exc:
                last_error = exc
                time.sleep(0.1)
        self.stop()
        raise StackStartError(
            f"{self.name} did not answer within {timeout_s:.0f}s ({last_error}); "
            f"log tail:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout_s``."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        signal_group(self.popen.pid, signal.SIGKILL)  # stragglers in the group, if any
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process SIGKILL cannot stop
            pass
        with _live_lock:
            _live.discard(self)

    def kill(self) -> None:
        """SIGKILL at once, as a crash would (for failure tests)."""
        if self.popen is not None:
            signal_group(self.popen.pid, signal.SIGKILL)
            self.popen.wait(STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session made the pid its own group id
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def _stop_all_live() -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        proc.stop(timeout_s=3)


RESTART_FIRST_S = 1.0
RESTART_CAP_S = 30.0


@dataclass
class Restarter:
    """Brings services that died back (same port, same files), each on its own backoff that
    doubles from 1 s to 30 s while its restarts keep failing. ``check()`` once in a while;
    ``on_event(service, what, detail)`` hears about each death and restart."""

    services: list[ServiceProcess]
    on_event: Callable[[ServiceProcess, str, str], None] = lambda _s, _w, _d: None
    _next_try: dict[int, float] = field(default_factory=dict)
    _delay: dict[int, float] = field(default_factory=dict)
    restarts: int = 0

    def check(self) -> None:
        now = time.monotonic()
        for service in self.services:
            key = id(service)
            if service.running:
                continue
            if key not in self._next_try:  # just noticed
                code = service.popen.returncode if service.popen else None
                self.on_event(service, "died", f"exit code {code}")
                self._next_try[key] = now
                self._delay[key] = RESTART_FIRST_S
            if now < self._next_try[key]:
                continue
            try:
                service.start()
            except StackStartError as exc:
                self._next_try[key] = now + self._delay[key]
                self._delay[key] = min(RESTART_CAP_S, self._delay[key] * 2)
                self.on_event(service, "restart failed", str(exc).splitlines()[0])
                continue
            self.restarts += 1
            del self._next_try[key], self._delay[key]
            self.on_event(service, "restarted", f"pid {service.pid}")
