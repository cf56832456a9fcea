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
from twinstream.fields import MAX_ID_BYTES, check_attributes, check_id, parse_attributes, printable

H_CONTENT_TYPE = "content-type"
H_ATTRIBUTES = "attributes"
H_PRODUCED_AT = "produced-at"
H_URI = "uri"

# Bounds on what a hostile producer can make a worker parse or store with every element (the
# id and attribute bounds live in twinstream.fields, shared with the API and the CLI).
MAX_CONTENT_TYPE_BYTES = 255
MAX_URI_BYTES = 4096


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
        """Key, value and headers, ready for ``KafkaProducer.send``; refuses (``InputError``)
        what a worker would refuse, so our own producers never publish a poison pill."""
        check_id(self.id)
        attributes = check_attributes(self.attributes)
        headers: Headers = [
            (H_PRODUCED_AT, str(self.produced_at_ms or now_ms()).encode()),
        ]
        if not self.is_tombstone:
            headers.append((H_CONTENT_TYPE, self.content_type.encode()))
            headers.append((H_ATTRIBUTES, json.dumps(attributes, sort_keys=True).encode()))
        if self.uri:
            headers.append((H_URI, self.uri.encode()))
        return self.id.encode("utf-8"), self.data, headers

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes | None,
                    headers: Iterable[tuple[str, bytes | None]] | None) -> ImageMessage:
        """Parse a consumed record; raises ``MessageError`` saying what is wrong with it.

        Everything here may come from a hostile producer: sizes are bounded, text must be UTF-8,
        and no input makes it raise anything but ``MessageError``.
        """
        if not key:
            raise MessageError("record has no key (the image id)")
        if len(key) > MAX_ID_BYTES:
            raise MessageError(f"record key is {len(key)} bytes, above {MAX_ID_BYTES}")
        image_id = _text(key, "record key")
        check_id(image_id, MessageError)
        h = _headers(headers)
        attributes = _attributes(h.get(H_ATTRIBUTES))
        produced_at = _produced_at(h.get(H_PRODUCED_AT))
        uri = _text(h[H_URI], "uri header", MAX_URI_BYTES) if h.get(H_URI) else None
        if uri is not None and any(ord(c) < 32 or c == "\x7f" for c in uri):
            raise MessageError(f"uri header contains control characters: {printable(uri[:60])}")
        content_type = _text(h.get(H_CONTENT_TYPE) or b"", "content-type header",
                             MAX_CONTENT_TYPE_BYTES)
        return cls(id=image_id, data=value, content_type=content_type,
                   attributes=attributes, uri=uri, produced_at_ms=produced_at)


def _headers(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, raw in headers or []:
        if raw is None:
            continue  # a header without a value says nothing
        if not isinstance(raw, (bytes, bytearray)):
            raise MessageError(f"header {name!r} is not bytes")
        out[name] = bytes(raw)  # the last of repeated headers wins, as in most Kafka clients
    return out


def _text(raw: bytes, what: str, max_bytes: int | None = None) -> str:
    if max_bytes is not None and len(raw) > max_bytes:
        raise MessageError(f"{what} is {len(raw)} bytes, above {max_bytes}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"{what} is not UTF-8 ({len(raw)} bytes)") from exc


def _attributes(raw: bytes | None) -> dict[str, Any]:
    return parse_attributes(raw, MessageError)


def _produced_at(raw: bytes | None) -> int:
    if not raw:
        return 0
    try:
        value = int(raw[:32])
    except ValueError as exc:
        raise MessageError("produced-at header is not an integer") from exc
    if not 0 <= value < 2**63 or len(raw) > 32:
        raise MessageError("produced-at header is out of range")
    return value


def content_id(data: bytes | Iterable[bytes]) -> str:
    """The default image id: the content hash, so re-ingesting the same bytes is a no-op.
    ``data`` may come in chunks (a large file read piece by piece): the id is the same."""
    digest = hashlib.sha256()
    for chunk in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data):
        digest.update(chunk)
    return digest.hexdigest()[:32]


def now_ms() -> int:
    return int(time.time() * 1000)
