"""What travels through a worker's pipeline: a batch of records and, per record, its fate.

A record starts as an ``Item`` holding the consumed Kafka record. The decoder fills in the parsed
message, the preprocessed array and the thumbnail (or a ``Failure``); the embedder adds the
vector; the writer turns the batch into index operations and dead letters. An item never leaves
the batch: whatever happens to it, its offset is accounted for when the batch is committed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twinstream.messages import ImageMessage

# The step where a record failed; the value of the ``error.stage`` dead-letter header.
STAGES = ("parse", "fetch", "decode", "embed", "write")


@dataclass(frozen=True)
class Failure:
    stage: str
    reason: str

    def __post_init__(self) -> None:
        assert self.stage in STAGES, self.stage


@dataclass
class Item:
    record: Any  # kafka ConsumerRecord (topic, partition, offset, key, value, headers)
    message: ImageMessage | None = None
    array: np.ndarray | None = None  # preprocessed encoder input [C, H, W]
    thumbnail: bytes | None = None
    vector: np.ndarray | None = None
    failure: Failure | None = None

    def fail(self, stage: str, reason: str) -> None:
        self.failure = Failure(stage, reason)
        self.array = None  # the pixels of a dead letter are not needed any more
        self.vector = None

    @property
    def is_tombstone(self) -> bool:
        return self.message is not None and self.message.is_tombstone

    @property
    def wants_vector(self) -> bool:
        """Decoded, not yet embedded, not failed."""
        return self.failure is None and self.array is not None and self.vector is None


@dataclass
class Batch:
    seq: int
    items: list[Item]
    generation: int = 0  # the partition assignment it was read under (see OffsetTracker)
    created: float = field(default_factory=time.monotonic)
    seconds: dict[str, float] = field(default_factory=dict)  # per pipeline step
    written: bool = False  # every item is in Redis or in the dead-letter topic
    written_at: float = 0.0  # monotonic time the writer finished it (see worker/durable.py)

    @property
    def records(self) -> list[Any]:
        return [item.record for item in self.items]

    @property
    def failures(self) -> list[Item]:
        return [item for item in self.items if item.failure is not None]


@dataclass(frozen=True)
class Upsert:
    id: str
    vector: np.ndarray
    attributes: dict[str, Any]
    thumbnail: bytes | None
    item: Item | None = field(default=None, compare=False, repr=False)  # the record behind it


@dataclass(frozen=True)
class Delete:
    id: str
    item: Item | None = field(default=None, compare=False, repr=False)


def index_operations(items: list[Item], model_version: str) -> list[Upsert | Delete]:
    """The index operations a batch stands for: per id, only the last record counts.

    Records of one id arrive in order (same key, same partition), so within a batch a later
    tombstone cancels an earlier image and a later image replaces an earlier tombstone. Failed
    items change nothing in the index (they go to the dead-letter topic).
    """
    last: dict[str, Upsert | Delete] = {}
    for item in items:
        if item.failure is not None or item.message is None:
            continue
        msg = item.message
        if msg.is_tombstone:
            op: Upsert | Delete = Delete(msg.id, item)
        elif item.vector is not None:
            attributes = {**msg.attributes, "model_version": model_version}
            if msg.uri:
                attributes.setdefault("uri", msg.uri)
            op = Upsert(msg.id, item.vector, attributes, item.thumbnail, item)
        else:  # pragma: no cover - the pipeline embeds every decoded item or fails it
            raise AssertionError(f"item {msg.id} reached the writer without a vector")
        last.pop(msg.id, None)  # keep the dict in record order of each id's last operation
        last[msg.id] = op
    return list(last.values())
