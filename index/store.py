"""The vector store on Redis 8 vector sets: one index version = one vector set + its metadata.

Keys (``{...}`` is a Redis Cluster hash tag):
    twinstream:{<name>}:alias            the live model version of index <name>
    twinstream:{<name>}:<version>:meta   hash: dim, metric, model version, created_at, card
    twinstream:{<name>}:<version>:vset   the vector set (element = image id, attributes = JSON)

Scores are cosine similarities in [-1, 1]: Redis reports (1 + cos) / 2 and we convert back.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from twinstream.errors import (
    IndexMismatchError,
    InputError,
    NotFoundError,
    ServiceUnavailable,
)
from twinstream.modelcard import ModelCard

MAX_K = 10_000


def connect(url: str, timeout_s: float = 5.0) -> redis.Redis:
    """A client for ``url`` after checking it is reachable, authorised and has vector sets."""
    if not url:
        raise ServiceUnavailable(
            "no Redis configured: set TWINSTREAM_REDIS_URL or pass --redis-url "
            "(or run 'twinstream up' for a local one)")
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                      socket_connect_timeout=timeout_s)
        client.ping()
    except redis.AuthenticationError as exc:
        raise ServiceUnavailable(f"Redis at {_safe(url)} refused the credentials: {exc}") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise ServiceUnavailable(
                f"Redis at {_safe(url)} needs a password (redis://:PASSWORD@host:port): "
                f"{exc}") from None
        raise ServiceUnavailable(f"Redis at {_safe(url)}: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, ValueError) as exc:
        raise ServiceUnavailable(
            f"cannot reach Redis at {_safe(url)} ({exc}); is it running and is the URL "
            "right?") from None
    require_vector_sets(client, url)
    return client


def require_vector_sets(client: redis.Redis, url: str = "") -> None:
    try:
        client.execute_command("VCARD", "twinstream:probe:no-such-key")
    except redis.ResponseError:
        version = str(client.info("server").get("redis_version", "?"))
        raise ServiceUnavailable(
            f"Redis {version} at {_safe(url)} has no vector sets: twinstream needs Redis >= 8.0 "
            "vector sets (VADD/VSIM)") from None


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _key(name: str, suffix: str) -> str:
    return f"twinstream:{{{name}}}:{suffix}"


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity, -1..1
    attributes: dict[str, Any]

    def to_dict(self) -> dict:
        return {"id": self.id, "score": self.score, "attributes": self.attributes}


@dataclass(frozen=True)
class IndexInfo:
    name: str
    version: str
    dim: int
    metric: str = "cosine"
    threshold: float | None = None
    quant: str = "q8"  # fixed when the vector set is created; every VADD repeats it


class VectorIndex:
    """One version of a named index."""

    def __init__(self, client: redis.Redis, info: IndexInfo):
        self.client = client
        self.info = info
        self.vset = _key(info.name, f"{info.version}:vset")
        self.meta = _key(info.name, f"{info.version}:meta")
        # Thumbnails depend on the image, not the model: one hash per index name.
        self.thumbs = _key(info.name, "thumbs")

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def for_model(cls, client: redis.Redis, name: str, card: ModelCard,
                  quant: str = "q8") -> VectorIndex:
        """The index version of ``card``'s model, created on first use. The first version of a
        name becomes its live version; later ones wait for ``twinstream index promote``.
        ``quant`` applies only when this call creates the version."""
        meta_key = _key(name, f"{card.version}:meta")
        client.hsetnx(meta_key, "quant", quant)  # first writer decides, atomically
        if client.hsetnx(meta_key, "dim", card.embedding_dim):
            client.hset(meta_key, mapping={
                "metric": card.metric, "version": card.version, "created_at": time.time(),
                "card": json.dumps(card.to_dict())})
        stored = client.hgetall(meta_key)
        if int(stored[b"dim"]) != card.embedding_dim:
            raise IndexMismatchError(
                f"index {name!r} version {card.version} has dimension {int(stored[b'dim'])}, "
                f"the model gives {card.embedding_dim}")
        client.set(_key(name, "alias"), card.version, nx=True)
        return cls(client, IndexInfo(name, card.version, card.embedding_dim, card.metric,
                                     card.threshold, stored[b"quant"].decode()))

    @staticmethod
    def live_version(client: redis.Redis, name: str) -> str | None:
        """The model version queries of index ``name`` use, or None if it has none yet."""
        version = client.get(_key(name, "alias"))
        return version.decode() if version is not None else None

    @staticmethod
    def promote(client: redis.Redis, name: str, version: str) -> None:
        """Point the alias at ``version`` (one SET: atomic for every reader)."""
        if not client.exists(_key(name, f"{version}:meta")):
            raise NotFoundError(f"index {name!r} has no version {version}")
        client.set(_key(name, "alias"), version)

    @classmethod
    def live(cls, client: redis.Redis, name: str) -> VectorIndex:
        """The version of index ``name`` that queries use."""
        version = cls.live_version(client, name)
        if version is None:
            raise NotFoundError(f"index {name!r} does not exist yet: run a worker to fill it")
        meta = client.hgetall(_key(name, f"{version}:meta"))
        if not meta:
            raise NotFoundError(f"index {name!r} points at version {version}, "
                                "which has no metadata")
        card = json.loads(meta.get(b"card", b"{}"))
        return cls(client, IndexInfo(name, version, int(meta[b"dim"]),
                                     meta.get(b"metric", b"cosine").decode(),
                                     card.get("threshold"), meta.get(b"quant", b"q8").decode()))

    def check_model(self, card: ModelCard) -> None:
        if card.version != self.info.version:
            raise IndexMismatchError(
                f"index {self.info.name!r} (live version {self.info.version}) was built by "
                f"another model than {card.version}; embed with the model that built it, or "
                "re-index")

    # --- writes ----------------------------------------------------------------------------------

    def _check_vector(self, vector: np.ndarray) -> np.ndarray:
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if v.shape[0] != self.info.dim:
            raise IndexMismatchError(
                f"vector has dimension {v.shape[0]}, index {self.info.name!r} has {self.info.dim}")
        if not np.all(np.isfinite(v)):
            raise InputError("vector contains NaN or infinity")
        return v

    def upsert(self, items: Iterable[tuple[str, np.ndarray, dict[str, Any]]]) -> int:
        """Add or replace elements (idempotent per id), pipelined in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        n = 0
        for image_id, vector, attributes in items:
            v = self._check_vector(vector)
            pipe.execute_command("VADD", self.vset, "FP32", v.astype("<f4").tobytes(), image_id,
                                 self.info.quant.upper(),
                                 "SETATTR", json.dumps(attributes, sort_keys=True))
            n += 1
        if n:
            pipe.execute()
        return n

    def delete(self, ids: Sequence[str]) -> int:
        """Remove ids (and their thumbnails); returns how many were present."""
        if not ids:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for image_id in ids:
            pipe.execute_command("VREM", self.vset, image_id)
        pipe.hdel(self.thumbs, *ids)
        return sum(int(r) for r in pipe.execute()[:-1])

    def put_thumbnails(self, thumbnails: dict[str, bytes]) -> None:
        if thumbnails:
            self.client.hset(self.thumbs, mapping=thumbnails)

    def thumbnail(self, image_id: str) -> bytes | None:
        return self.client.hget(self.thumbs, image_id)

    # --- reads -----------------------------------------------------------------------------------

    def count(self) -> int:
        return int(self.client.execute_command("VCARD", self.vset) or 0)

    def vector(self, image_id: str) -> np.ndarray | None:
        """The stored (possibly quantized, so approximate) vector of an id."""
        raw = self.client.execute_command("VEMB", self.vset, image_id)
        return None if raw is None else np.array([float(x) for x in raw], dtype=np.float32)

    def exists(self, image_id: str) -> bool:
        return bool(self.client.execute_command("VISMEMBER", self.vset, image_id))

    def search(self, vector: np.ndarray, k: int = 10) -> list[Hit]:
        if not 1 <= k <= MAX_K:
            raise InputError(f"k must be between 1 and {MAX_K}, got {k}")
        v = self._check_vector(vector)
        raw = self.client.execute_command(
            "VSIM", self.vset, "FP32", v.astype("<f4").tobytes(), "WITHSCORES", "WITHATTRIBS",
            "COUNT", k)
        return [_hit(element, value) for element, value in _pairs(raw)]


def _pairs(raw: Any) -> list[tuple[Any, Any]]:
    """VSIM replies as a dict (RESP3 / redis-py parsing) or a flat list; normalise."""
    if isinstance(raw, dict):
        return list(raw.items())
    return list(zip(raw[0::3], zip(raw[1::3], raw[2::3], strict=True), strict=True))


def _hit(element: Any, value: Any) -> Hit:
    score, attrs = value if isinstance(value, (list, tuple)) else (value, None)
    image_id = element.decode() if isinstance(element, bytes) else str(element)
    if isinstance(attrs, bytes):
        attrs = attrs.decode()
    cosine = 2.0 * float(score) - 1.0
    return Hit(image_id, cosine if math.isfinite(cosine) else -1.0,
               json.loads(attrs) if attrs else {})
