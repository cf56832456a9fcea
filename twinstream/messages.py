"""The Kafka message format of the images topic (DESIGN.md, "Kafka message").

key    = image id, UTF-8 (stable: chosen by the producer or the content hash)
value  = encoded image bytes; empty with a ``uri`` header for images too large to inline;
         null (a tombstone) to delete the id from the index
headers: ``content-type``, ``attributes`` (JSON object: label, source, ...), ``produced-at``
         (milliseconds since the epoch), ``uri`` (optional)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from twinstream.errors import InputError

H_CONTENT_TYPE = "content-type"
H_ATTRIBUTES = "attributes"
H_PRODUCED_AT = "produced-at"
H_URI = "uri"

MAX_ID_BYTES = 512


class MessageError(InputError):
    """A record on the images topic that does not follow the message format."""


Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class ImageMessage:
    id: str
    data: bytes | None  # None: a tombstone (delete the id)
    content_type: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    uri: str | None = None
    produced_at_ms: int = 0

    @property
    def is_tombstone(self) -> bool:
        return self.data is None

    def to_record(self) -> tuple[bytes, bytes | None, Headers]:
        """Key, value and headers, ready for ``KafkaProducer.send``."""
        check_id(self.id)
        headers: Headers = [
            (H_PRODUCED_AT, str(self.produced_at_ms or now_ms()).encode()),
        ]
        if not self.is_tombstone:
            headers.append((H_CONTENT_TYPE, self.content_type.encode()))
            headers.append((H_ATTRIBUTES, json.dumps(self.attributes, sort_keys=True).encode()))
        if self.uri:
            headers.append((H_URI, self.uri.encode()))
        return self.id.encode("utf-8"), self.data, headers

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes | None,
                    headers: Iterable[tuple[str, bytes]] | None) -> ImageMessage:
        """Parse a consumed record; raises ``MessageError`` saying what is wrong with it."""
        if not key:
            raise MessageError("record has no key (the image id)")
        try:
            image_id = key.decode("utf-8")
        except UnicodeDecodeError:
            raise MessageError(f"record key is not UTF-8: {key[:40]!r}") from None
        check_id(image_id, MessageError)
        h = {name: raw for name, raw in (headers or [])}
        try:
            attributes = json.loads(h[H_ATTRIBUTES]) if h.get(H_ATTRIBUTES) else {}
        except ValueError as exc:
            raise MessageError(f"attributes header is not JSON: {exc}") from None
        if not isinstance(attributes, dict):
            raise MessageError("attributes header must be a JSON object")
        try:
            produced_at = int(h.get(H_PRODUCED_AT) or 0)
        except ValueError:
            raise MessageError("produced-at header is not an integer") from None
        uri = h[H_URI].decode("utf-8", "replace") if h.get(H_URI) else None
        return cls(id=image_id, data=value,
                   content_type=(h.get(H_CONTENT_TYPE) or b"").decode("utf-8", "replace"),
                   attributes=attributes, uri=uri, produced_at_ms=produced_at)


def check_id(image_id: str, error: type[InputError] = InputError) -> None:
    if not image_id:
        raise error("image id must not be empty")
    if len(image_id.encode("utf-8")) > MAX_ID_BYTES:
        raise error(f"image id longer than {MAX_ID_BYTES} bytes: {image_id[:40]}...")
    if any(ord(c) < 32 for c in image_id):
        raise error(f"image id contains control characters: {image_id!r}")


def content_id(data: bytes) -> str:
    """The default image id: the content hash, so re-ingesting the same bytes is a no-op."""
    return hashlib.sha256(data).hexdigest()[:32]


def now_ms() -> int:
    return int(time.time() * 1000)
