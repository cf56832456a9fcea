"""Keep freed memory for reuse instead of handing it back to the kernel after every batch.

glibc returns freed memory at the top of the heap to the kernel once more than 128 KB is free
there, and serves blocks above 128 KB (a stacked batch of encoder inputs) with mmap of their own.
A worker frees a batch's pixels and arrays every few milliseconds and allocates the next batch's
at once, so by default each batch is paid again in page faults: measured on the demo encoder,
decode + preprocessing + stacking cost 313 us per 64 px image that way and 150 us with the
memory kept (bench/worker_overhead.py shows it end to end). The worker's memory is bounded by the
batches it holds (worker.max_in_flight), so keeping up to that much is the price, once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("twinstream.worker")

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and are reused (glibc's own ceiling for its dynamic
# threshold); larger ones (a decoded 40-megapixel photo) still go back to the kernel when freed.
MMAP_THRESHOLD_BYTES = 32 << 20
# Free memory kept at the top of the heap before any is returned.
TRIM_THRESHOLD_BYTES = 256 << 20


def keep_freed_memory() -> bool:
    """Tune glibc's allocator for the worker's batch-after-batch pattern; False where the C
    library is not glibc (musl, macOS), which is then left as it is."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
          and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    if not ok:
        log.debug("mallopt refused the worker's allocator settings; keeping the defaults")
    return ok
