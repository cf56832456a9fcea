"""Publish image files to the images topic (key = id, value = bytes, label from the folder)."""

from __future__ import annotations

import mimetypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kafka.errors import KafkaError

from twinstream.messages import ImageMessage, content_id, now_ms
from twinstream.settings import KafkaSettings
from worker.kafka_io import ensure_topics, make_producer


@dataclass
class IngestSummary:
    published: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"published": self.published, "failed": len(self.failed),
                "failures": self.failed}


def message_for_file(path: Path, label_from_dir: bool = True,
                     attributes: dict | None = None) -> ImageMessage:
    data = path.read_bytes()
    attrs = dict(attributes or {})
    if label_from_dir:
        attrs.setdefault("label", path.parent.name)
    attrs.setdefault("source", str(path))
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return ImageMessage(id=content_id(data), data=data, content_type=content_type,
                        attributes=attrs, produced_at_ms=now_ms())


def ingest_files(settings: KafkaSettings, paths: Sequence[Path], label_from_dir: bool = True,
                 attributes: dict | None = None,
                 progress: Callable | None = None) -> IngestSummary:
    """Publish each file; unreadable files and failed sends are counted, not fatal."""
    ensure_topics(settings)
    producer = make_producer(settings)
    summary = IngestSummary()
    pending = []
    try:
        for path in (progress(paths) if progress else paths):
            try:
                msg = message_for_file(path, label_from_dir, attributes)
            except OSError as exc:
                summary.failed[str(path)] = f"cannot read: {exc.strerror or exc}"
                continue
            key, value, headers = msg.to_record()
            pending.append((path, msg.id, producer.send(settings.topic, key=key, value=value,
                                                        headers=headers)))
        producer.flush()
        for path, image_id, future in pending:
            try:
                future.get(timeout=30)
                summary.published += 1
                summary.ids.append(image_id)
            except KafkaError as exc:
                summary.failed[str(path)] = f"not published: {exc}"
    finally:
        producer.close(timeout=10)
    return summary
