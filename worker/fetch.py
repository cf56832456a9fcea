"""The bytes of a record's image: its value, or the file its ``uri`` header names.

A ``uri`` comes from whoever can write to the topic, so it is read as untrusted (DESIGN.md,
"Trust boundaries"): only when by-reference images are switched on (``TWINSTREAM_WORKER_URI_ROOTS``
names the shared volume; empty, the default, allows none), only below those roots after symlinks
are resolved, only a regular file (a FIFO or a device would block a reader or never end), opened
without following a link swapped in since, and read in a thread of its own with a deadline, so
that a hung network mount fails one record instead of the worker. Reasons never quote the file's
contents.
"""

from __future__ import annotations

import threading
from pathlib import Path

from twinstream.fields import quote
from twinstream.files import NotARegularFile, read_regular_file
from twinstream.messages import ImageMessage
from twinstream.settings import WorkerSettings

# Reads that may hang at once (each in a daemon thread): beyond this, a mount that hangs makes
# further by-reference records fail at once instead of piling up threads.
MAX_STUCK_READS = 8


class FetchError(Exception):
    """The bytes of an image could not be had (oversized record, missing or forbidden uri)."""


def parse_roots(text: str) -> list[Path]:
    return [Path(r.strip()).resolve() for r in text.split(":") if r.strip()]


class Fetcher:
    def __init__(self, settings: WorkerSettings):
        self.max_bytes = settings.max_image_bytes
        self.roots = parse_roots(settings.uri_roots)
        self.timeout_s = settings.uri_read_timeout_s
        self._readers = threading.BoundedSemaphore(MAX_STUCK_READS)

    def image_bytes(self, msg: ImageMessage) -> bytes:
        """The encoded image: the record's value, or the file its ``uri`` names."""
        if msg.data:
            if len(msg.data) > self.max_bytes:
                raise FetchError(f"record value is {len(msg.data):,} bytes, above the limit of "
                                 f"{self.max_bytes:,} (TWINSTREAM_WORKER_MAX_IMAGE_BYTES)")
            return msg.data
        if not msg.uri:
            return b""  # decode_image says "empty image"
        return self.read_uri(msg.uri)

    def read_uri(self, uri: str) -> bytes:
        path = self.allowed_path(uri)
        if not self._readers.acquire(blocking=False):
            raise FetchError(f"{MAX_STUCK_READS} reads of by-reference images are hanging; "
                             "is the shared volume reachable?")
        box: dict[str, object] = {}

        def read() -> None:
            try:
                box["data"] = self._read_regular_file(path, uri)
            except BaseException as exc:  # handed to the waiting thread
                box["error"] = exc
            finally:
                self._readers.release()

        reader = threading.Thread(target=read, name="uri-read", daemon=True)
        reader.start()
        reader.join(self.timeout_s)
        if reader.is_alive():  # left behind: a daemon thread never delays the exit
            raise FetchError(f"reading uri {quote(uri)} took longer than {self.timeout_s:g} s "
                             "(TWINSTREAM_WORKER_URI_READ_TIMEOUT_S); is the volume hanging?")
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["data"]  # type: ignore[return-value]

    def allowed_path(self, uri: str) -> Path:
        """The real path a uri names, if this worker may read it."""
        if not self.roots:
            raise FetchError("by-reference images are switched off on this worker: set "
                             "TWINSTREAM_WORKER_URI_ROOTS to the shared folder they live in")
        path_text = uri[len("file://"):] if uri.startswith("file://") else uri
        if "://" in path_text:
            raise FetchError(f"unsupported uri {quote(uri)}: only local paths (a shared volume) "
                             "and file:// are read")
        path = Path(path_text)
        if not path.is_absolute():
            raise FetchError(f"uri {quote(uri)} is not an absolute path")
        try:
            real = path.resolve(strict=True)  # symlinks resolved before the roots are checked
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise FetchError(f"uri {quote(uri)} does not exist (is the shared volume mounted "
                             "on this worker?)") from exc
        except (OSError, RuntimeError, ValueError) as exc:  # loops, NUL bytes, permissions
            raise FetchError(f"uri {quote(uri)} cannot be resolved: "
                             f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from exc
        if not any(real.is_relative_to(root) for root in self.roots):
            raise FetchError(f"uri {quote(uri)} is outside the allowed folders "
                             "(TWINSTREAM_WORKER_URI_ROOTS)")
        return real

    def _read_regular_file(self, real: Path, uri: str) -> bytes:
        # follow_symlinks False: a symlink swapped in after the roots were checked is refused.
        try:
            data = read_regular_file(real, self.max_bytes, follow_symlinks=False)
        except NotARegularFile as exc:
            raise FetchError(f"uri {quote(uri)} {exc.what}") from exc
        except IsADirectoryError as exc:
            raise FetchError(f"uri {quote(uri)} is a folder, not an image file") from exc
        except OSError as exc:
            raise FetchError(f"uri {quote(uri)} cannot be read: "
                             f"{exc.strerror or type(exc).__name__}") from exc
        if len(data) > self.max_bytes:
            raise FetchError(f"file {quote(uri)} is larger than the limit of "
                             f"{self.max_bytes:,} bytes (TWINSTREAM_WORKER_MAX_IMAGE_BYTES)")
        return data
