"""Decoder step: record -> message -> image bytes (inline or by ``uri``) -> encoder input array
and thumbnail. Everything a hostile record can break fails *that item* with a reason; nothing
here raises for bad data.

Decoding runs in a small thread pool: Pillow releases the GIL while it decodes and resizes, so a
few threads keep up with onnxruntime without another process.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from twinstream.errors import ImageDecodeError
from twinstream.messages import ImageMessage, MessageError
from twinstream.preprocess import Preprocessing, decode_image, image_to_array
from twinstream.settings import WorkerSettings
from twinstream.thumbnails import make_thumbnail
from worker.batch import Batch, Item


class FetchError(Exception):
    """The bytes of an image could not be had (oversized record, missing or forbidden uri)."""


class Decoder:
    name = "decode"

    def __init__(self, spec: Preprocessing, settings: WorkerSettings):
        self.spec = spec
        self.max_pixels = settings.max_image_pixels
        self.max_bytes = settings.max_image_bytes
        self.roots = [Path(r).resolve() for r in settings.uri_roots.split(":") if r.strip()]
        self.pool = ThreadPoolExecutor(max(1, settings.decode_threads),
                                       thread_name_prefix="decode")

    def __call__(self, batch: Batch) -> None:
        images = []
        for item in batch.items:
            record = item.record
            try:
                item.message = ImageMessage.from_record(record.key, record.value, record.headers)
            except MessageError as exc:
                item.fail("parse", exc.message)
                continue
            if not item.message.is_tombstone:
                images.append(item)
        for _ in self.pool.map(self._decode, images):
            pass

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _decode(self, item: Item) -> None:
        try:
            data = self.image_bytes(item.message)
        except FetchError as exc:
            item.fail("fetch", str(exc))
            return
        try:
            img = decode_image(data, self.max_pixels)
            item.array = image_to_array(img, self.spec)
            item.thumbnail = make_thumbnail(img)
        except ImageDecodeError as exc:
            item.fail("decode", exc.message)
        except Exception as exc:  # hostile input must never take the worker down
            item.fail("decode", f"unexpected {type(exc).__name__}: {str(exc)[:200]}")

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
        path_text = uri[len("file://"):] if uri.startswith("file://") else uri
        if "://" in path_text:
            raise FetchError(f"unsupported uri {uri!r}: only local paths (a shared volume) and "
                             "file:// are read")
        path = Path(path_text)
        if not path.is_absolute():
            raise FetchError(f"uri {uri!r} is not an absolute path")
        try:
            real = path.resolve(strict=True)  # symlinks resolved before the roots are checked
        except (FileNotFoundError, NotADirectoryError):
            raise FetchError(f"uri {uri!r} does not exist (is the shared volume mounted on "
                             "this worker?)") from None
        except (OSError, RuntimeError) as exc:
            raise FetchError(f"uri {uri!r} cannot be resolved: {exc}") from None
        if self.roots and not any(real.is_relative_to(root) for root in self.roots):
            raise FetchError(f"uri {uri!r} is outside the allowed folders "
                             "(TWINSTREAM_WORKER_URI_ROOTS)")
        try:
            with real.open("rb") as f:
                data = f.read(self.max_bytes + 1)
        except IsADirectoryError:
            raise FetchError(f"uri {uri!r} is a folder, not an image file") from None
        except OSError as exc:
            raise FetchError(f"uri {uri!r} cannot be read: {exc.strerror or exc}") from None
        if len(data) > self.max_bytes:
            raise FetchError(f"file {uri!r} is larger than the limit of {self.max_bytes:,} "
                             "bytes (TWINSTREAM_WORKER_MAX_IMAGE_BYTES)")
        return data
