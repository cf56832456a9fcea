"""Decoder step: record -> message -> image bytes (inline or by ``uri``) -> encoder input array
and thumbnail. Everything a hostile record can break fails *that item* with a reason; nothing
here raises for bad data.

Decoding runs in a small thread pool: Pillow releases the GIL while it decodes and resizes, so a
few threads keep up with onnxruntime without another process. What could block for good (reading
a by-reference file) runs with a deadline in ``worker.fetch``, so no pool thread ever hangs and
closing the pool never waits on one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from twinstream.errors import ImageDecodeError
from twinstream.messages import ImageMessage, MessageError
from twinstream.preprocess import Preprocessing, decode_image, image_to_array
from twinstream.settings import WorkerSettings
from twinstream.thumbnails import thumbnail_for
from worker.batch import Batch, Item
from worker.fetch import Fetcher, FetchError

__all__ = ["Decoder", "FetchError"]


class Decoder:
    name = "decode"

    def __init__(self, spec: Preprocessing, settings: WorkerSettings):
        self.spec = spec
        self.max_pixels = settings.max_image_pixels
        self.thumbnails = settings.thumbnails
        self.fetcher = Fetcher(settings)
        self.threads = max(1, settings.decode_threads)
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")

    def __call__(self, batch: Batch) -> None:
        images = [item for item in batch.items if self._parse(item)]
        # One task per decode thread, not one per image: a task hand-off (future, queue, wake-up)
        # costs about as much CPU as decoding a small PNG.
        chunks = [images[i::self.threads] for i in range(min(self.threads, len(images)))]
        for _ in self.pool.map(self._decode_all, chunks):
            pass

    def close(self) -> None:
        # Never wait: a worker stopping must not depend on what a decode thread is doing.
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _parse(self, item: Item) -> bool:
        """Fill in the item's message; True when it is an image still to decode."""
        record = item.record
        unreadable = getattr(record, "reason", None)  # worker.reader.UnreadableRecord
        if unreadable is not None:
            item.fail("parse", unreadable)
            return False
        try:
            item.message = ImageMessage.from_record(record.key, record.value, record.headers)
        except MessageError as exc:
            item.fail("parse", exc.message)
            return False
        except Exception as exc:  # hostile input must never take the worker down
            item.fail("parse", f"unexpected {type(exc).__name__} reading the record")
            return False
        return not item.message.is_tombstone

    def _decode_all(self, items: list[Item]) -> None:
        for item in items:
            self._decode(item)

    def _decode(self, item: Item) -> None:
        try:
            data = self.fetcher.image_bytes(item.message)
        except FetchError as exc:
            item.fail("fetch", str(exc))
            return
        except Exception as exc:
            item.fail("fetch", f"unexpected {type(exc).__name__} fetching the image")
            return
        try:
            img = decode_image(data, self.max_pixels)
            item.array = image_to_array(img, self.spec)
            if self.thumbnails:
                item.thumbnail = thumbnail_for(data, img)
        except ImageDecodeError as exc:
            item.fail("decode", exc.message)
        except Exception as exc:  # hostile input must never take the worker down
            item.fail("decode", f"unexpected {type(exc).__name__}: {str(exc)[:200]}")
