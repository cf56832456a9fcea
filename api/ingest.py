"""The API's writes through the stream: images and tombstones published for the workers.

Every upload is checked as a worker would check it (size, decoding, id, attributes) before any is
published, so a request is all or nothing and the API never publishes a record that a worker
would only dead-letter later.
"""

from __future__ import annotations

import threading
from typing import Any

from index.service import SearchService
from twinstream.errors import NotFoundError, ServiceUnavailable, TooLargeError
from twinstream.messages import ImageMessage, content_id, now_ms
from twinstream.settings import KafkaSettings
from worker.kafka_io import MAX_REQUEST_BYTES
from worker.publish import Publisher

# Kafka's request limit less room for headers.
MAX_INLINE_BYTES = MAX_REQUEST_BYTES - 64 * 1024


class StreamWriter:
    """Publishes for the API; the Kafka producer is made on first use (a server that never
    ingests needs no broker)."""

    def __init__(self, settings: KafkaSettings, search: SearchService):
        self.settings = settings
        self.search = search
        self._lock = threading.Lock()
        self._publisher: Publisher | None = None

    def publisher(self) -> Publisher:
        with self._lock:
            if self._publisher is None:
                self._publisher = Publisher(self.settings, client_id="twinstream-api")
            return self._publisher

    def ingest(self, uploads: list[tuple[bytes, str]], image_id: str | None,
               attributes: dict[str, Any]) -> list[str]:
        """Publish images (bytes, content type); their ids once the broker has them all."""
        attributes = self.search.check_attributes({"source": "api", **attributes})
        if image_id is not None:
            self.search.check_id(image_id)
        messages = []
        for data, content_type in uploads:
            if len(data) > MAX_INLINE_BYTES:
                raise TooLargeError(f"image is {len(data):,} bytes; at most "
                                    f"{MAX_INLINE_BYTES:,} can be published inline (use "
                                    "'twinstream ingest' with a shared volume for larger ones)")
            self.search.prepare(data, embed=False)  # refuse now what a worker would refuse
            messages.append(ImageMessage(
                id=image_id or content_id(data), data=data, content_type=content_type,
                attributes=attributes, produced_at_ms=now_ms()))
        return self.publisher().publish(messages)

    def delete(self, image_id: str) -> bool:
        """Publish a tombstone; returns whether the id is in the live index right now."""
        self.search.check_id(image_id)
        try:
            indexed = self.search.live_index().exists(image_id)
        except (ServiceUnavailable, NotFoundError):
            indexed = False  # no index yet: the tombstone still orders after a pending image
        self.publisher().publish([ImageMessage(id=image_id, data=None, produced_at_ms=now_ms())])
        return indexed

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
