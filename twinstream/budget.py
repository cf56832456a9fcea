"""How many images a server decodes at once, and how many pixels: its memory, bounded.

A 6300 x 6300 PNG is 131 KB on the wire and 120 MB once decoded (more while it is converted);
eight of them at once took the API from 143 MB to 2.6 GB. Every upload asks the budget for its
pixel count (read from the image header, before anything is decoded); when neither a slot nor
the pixels are free within a short wait, the request is answered 503 with ``Retry-After`` rather
than queued without bound. After a large decode the freed memory is handed back to the operating
system (glibc keeps it otherwise, and the process stays at its peak for good).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from twinstream.errors import OverloadedError

WAIT_S = 2.0  # how long an upload waits for room before the 503
RETRY_AFTER_S = 1
TRIM_ABOVE_PIXELS = 4_000_000  # decodes larger than this give their memory back at once


class DecodeBudget:
    def __init__(self, slots: int, pixels: int, wait_s: float = WAIT_S):
        self.slots = slots
        self.pixels = pixels
        self.wait_s = wait_s
        self._free_slots = slots
        self._free_pixels = pixels
        self._room = threading.Condition()

    @contextmanager
    def admit(self, pixels: int) -> Iterator[None]:
        """Hold one slot and ``pixels`` (capped at the whole budget, so that one image that
        alone needs more than all of it still runs when it is alone) while decoding."""
        need = min(max(1, pixels), self.pixels)
        with self._room:
            if not self._room.wait_for(lambda: self._free_slots > 0 and
                                       self._free_pixels >= need, timeout=self.wait_s):
                raise OverloadedError(f"the server is decoding as many images as it may "
                                      f"({self.slots} at once, {self.pixels:,} pixels); retry "
                                      f"in {RETRY_AFTER_S} s", retry_after_s=RETRY_AFTER_S)
            self._free_slots -= 1
            self._free_pixels -= need
        try:
            yield
        finally:
            with self._room:
                self._free_slots += 1
                self._free_pixels += need
                self._room.notify_all()
            if pixels > TRIM_ABOVE_PIXELS:
                release_freed_memory()

    def in_use(self) -> tuple[int, int]:
        """(slots, pixels) held right now."""
        with self._room:
            return self.slots - self._free_slots, self.pixels - self._free_pixels


def _libc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_TRIM = _libc_trim()


def release_freed_memory() -> None:
    if _TRIM is not None:
        _TRIM(0)
