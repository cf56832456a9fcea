"""Publish image files to the images topic, and tombstones that delete ids.

One record per file: key = id (the content hash by default, so re-ingesting the same bytes is a
no-op downstream; or the path), value = the file's bytes when it is at most
``kafka.inline_max_bytes``, otherwise empty with a ``uri`` header naming the file's absolute path
(workers read it from a volume they share with the producer). Headers carry the content type,
the attributes (label from the folder, ``--attr`` pairs, source path) and the publish time.

Sends are asynchronous; failures are counted per file, not fatal, and reported at the end.
"""

from __future__ import annotations

import mimetypes
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kafka.errors import KafkaError

from twinstream.errors import InputError
from twinstream.files import display_path, read_regular_file
from twinstream.messages import ImageMessage, check_id, content_id, now_ms
from twinstream.settings import KafkaSettings
from worker.publish import Publisher

ID_SOURCES = ("content", "path")


@dataclass
class IngestSummary:
    published: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    ids: list[str] = field(default_factory=list)  # of the published files, in order
    by_reference: int = 0  # published with a uri header instead of inline bytes

    def to_dict(self) -> dict:
        return {"published": self.published, "skipped": len(self.skipped),
                "failed": len(self.failed), "by_reference": self.by_reference,
                "failures": self.failed, "skips": self.skipped}


def _file_content_id(path: Path) -> str:
    with path.open("rb") as f:
        return content_id(iter(lambda: f.read(1 << 20), b""))


def message_for_file(path: Path, label_from_dir: bool = True, attributes: dict | None = None,
                     id_from: str = "content", inline_max_bytes: int = 900_000
                     ) -> ImageMessage:
    """The record of one file. Raises ``OSError`` if it cannot be read and ``InputError`` if it
    is not a regular file (a FIFO would block for ever) or its record would be refused.

    A file name that is not UTF-8 is shown with ``\\xff`` escapes in the label, the source and
    a path id; such a file can only go inline (a ``uri`` must name the file exactly).
    """
    head = read_regular_file(path, inline_max_bytes)
    inline = len(head) <= inline_max_bytes
    data = head if inline else b""
    attrs = dict(attributes or {})
    if label_from_dir:
        attrs.setdefault("label", display_path(path.parent.name) or "unlabelled")
    attrs.setdefault("source", display_path(path))
    if id_from == "content":
        image_id = content_id(data) if inline else _file_content_id(path)
    else:
        image_id = display_path(path.as_posix())
    uri = None
    if not inline:
        uri = display_path(path.resolve())
        if uri != str(path.resolve()):
            raise InputError(f"{uri}: a file name that is not UTF-8 cannot be sent by "
                             f"reference (it is above --inline-max-bytes {inline_max_bytes:,})")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return ImageMessage(id=image_id, data=data, content_type=content_type, attributes=attrs,
                        uri=uri, produced_at_ms=now_ms())


def ingest_files(settings: KafkaSettings, paths: Sequence[Path], label_from_dir: bool = True,
                 attributes: dict | None = None, progress: Callable | None = None,
                 id_from: str = "content") -> IngestSummary:
    """Publish each file; unreadable files and failed sends are counted, not fatal.

    A file whose id was already published in this run (same content twice) is skipped.
    """
    if id_from not in ID_SOURCES:
        raise InputError(f"--id-from must be one of {', '.join(ID_SOURCES)}, got {id_from!r}")
    publisher = Publisher(settings, linger_ms=20)
    summary = IngestSummary()
    lock = threading.Lock()
    seen: dict[str, str] = {}

    def sent(by_reference: bool):
        def ok(_metadata) -> None:  # runs in the producer's I/O thread
            with lock:
                summary.published += 1
                summary.by_reference += by_reference
        return ok

    def failed(path: Path):
        def fail(exc) -> None:
            with lock:
                summary.failed[display_path(path)] = f"not published: {exc}"
        return fail

    try:
        for path in (progress(paths) if progress else paths):
            shown = display_path(path)
            try:
                msg = message_for_file(path, label_from_dir, attributes, id_from,
                                       settings.inline_max_bytes)
                key, value, headers = msg.to_record()  # refuses what a worker would refuse
            except OSError as exc:
                summary.failed[shown] = f"cannot read: {exc.strerror or exc}"
                continue
            except InputError as exc:
                summary.failed[shown] = exc.message
                continue
            if msg.id in seen:
                summary.skipped[shown] = f"same id as {seen[msg.id]}"
                continue
            seen[msg.id] = shown
            try:
                future = publisher.send(settings.topic, key, value, headers)
            except KafkaError as exc:
                summary.failed[shown] = f"not published: {exc}"
                continue
            summary.ids.append(msg.id)
            future.add_callback(sent(msg.uri is not None))
            future.add_errback(failed(path))
        publisher.flush()
    finally:
        publisher.close()
    failed_paths = set(summary.failed)
    if failed_paths:  # ids of files whose send failed are not published
        ok_ids = {msg_id for msg_id, p in seen.items() if p not in failed_paths}
        summary.ids = [i for i in summary.ids if i in ok_ids]
    return summary


def delete_ids(settings: KafkaSettings, ids: Iterable[str]) -> int:
    """Publish a tombstone per id; workers remove those ids (and thumbnails) from the index."""
    ids = [check_id(image_id) for image_id in dict.fromkeys(ids)]
    with Publisher(settings) as publisher:
        publisher.publish(ImageMessage(id=image_id, data=None) for image_id in ids)
    return len(ids)
