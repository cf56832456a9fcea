"""The vector store on Redis 8 vector sets: one index version = S vector-set shards + metadata.

An index has a name; each model that fills it gets a version of its own (the model version), with
its model card stored beside it, and an alias names the version queries use (``index/layout.py``
has the keys). Ids are routed to shards by a stable hash; a search asks every shard for its top-k
in one pipelined round trip and merges. On a Redis Cluster the shards' hash tags spread them over
the masters.

Guarantees: upserts are idempotent per id (same id -> same element, vector and attributes
replaced); a batch is checked as a whole before anything is sent, so a bad vector, attribute or
model version in it writes nothing; every Redis error becomes a one-line ``TwinstreamError``.
Scores are cosine similarities in [-1, 1] (Redis reports (1 + cos) / 2; ``index/query.py``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index import layout
from index.connection import Client, connect, require_vector_sets, translate_errors
from index.query import MAX_K, Hit, SearchOptions, merge_hits, parse_attributes, parse_hits
from twinstream.errors import (
    ConfigError,
    IndexMismatchError,
    IndexNotReadyError,
    InputError,
    NotFoundError,
    ServiceUnavailable,
    TwinstreamError,
)
from twinstream.fields import check_id, checked_attributes_json, quote
from twinstream.modelcard import ModelCard
from twinstream.settings import QUANTIZATIONS, RedisSettings

__all__ = ["MAX_K", "Hit", "IndexInfo", "StoredItem", "VectorIndex", "connect",
           "require_vector_sets"]

UPSERT_CHUNK = 1000  # commands per pipeline round trip

# Creates the metadata of a version unless it exists, registers the version and makes it live if
# the name has no live version yet: one atomic step, however many workers start at once.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'version', ARGV[1], 'dim', ARGV[2], 'metric', ARGV[3],
             'quant', ARGV[4], 'shards', ARGV[5], 'created_at', ARGV[6], 'card', ARGV[7])
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[1], 'NX')
return redis.call('HGETALL', KEYS[1])
"""
# Points the alias at a version that exists, in one step (a reader sees the old or the new one).
_PROMOTE = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""
_EXPECTED_TYPES = {"alias": b"string", "versions": b"set", "meta": b"hash", "thumbs": b"hash"}


@dataclass(frozen=True)
class IndexInfo:
    name: str
    version: str
    dim: int
    metric: str = "cosine"
    threshold: float | None = None
    quant: str = "q8"  # fixed when the version is created
    shards: int = 1  # fixed when the version is created
    # From the model card (twinstream.calibration reads them): cosine -> P(same identity), and
    # the recognition cuts by gallery size. Empty for models exported before they existed.
    calibration: dict[str, Any] = field(default_factory=dict, compare=False)
    recognition: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class StoredItem:
    id: str
    vector: np.ndarray  # as stored: approximate under q8/bin quantization
    attributes: dict[str, Any]

    def to_dict(self) -> dict:
        return {"id": self.id, "vector": self.vector.tolist(), "attributes": self.attributes}


def decode_hash(meta: dict) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                          else str(v)) for k, v in meta.items()}


def info_from_meta(name: str, meta: dict[str, str]) -> IndexInfo:
    card = json.loads(meta.get("card") or "{}")
    return IndexInfo(name, meta["version"], int(meta["dim"]), meta.get("metric", "cosine"),
                     card.get("threshold"), meta.get("quant", "q8"), int(meta.get("shards", 1)),
                     card.get("calibration") or {}, card.get("recognition") or {})


class VectorIndex:
    """One version of a named index."""

    def __init__(self, client: Client, info: IndexInfo, ef: int | None = None):
        self.client = client
        self.info = info
        self.ef = ef  # default exploration factor of searches (None: Redis's default)
        self.keys = layout.shard_keys(info.name, info.version, info.shards)
        self.vset = self.keys[0]
        self.meta = layout.meta_key(info.name, info.version)
        self.thumbs = layout.thumbs_key(info.name)

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def for_settings(cls, client: Client, settings: RedisSettings, card: ModelCard
                     ) -> VectorIndex:
        """``for_model`` with the index name, quantization, shards and ef of the settings."""
        return cls.for_model(client, settings.index, card, settings.quant,
                             shards=settings.shards, ef=settings.ef or None)

    @classmethod
    def for_model(cls, client: Client, name: str, card: ModelCard, quant: str = "q8", *,
                  shards: int = 1, ef: int | None = None) -> VectorIndex:
        """The index version of ``card``'s model, created on first use. The first version of a
        name becomes its live version; later ones wait for ``twinstream index promote``.
        ``quant`` and ``shards`` apply only when this call creates the version."""
        layout.check_name(name)
        layout.check_version(card.version)
        layout.check_shards(shards)
        if quant not in QUANTIZATIONS:
            raise InputError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, "
                             f"got {quant!r}")
        keys = (layout.meta_key(name, card.version), layout.versions_key(name),
                layout.alias_key(name))
        with guard(client, name, card.version, shards):
            raw = client.eval(_CREATE, 3, *keys, card.version, card.embedding_dim, card.metric,
                              quant, shards, time.time(), json.dumps(card.to_dict()))
            client.sadd(layout.INDEXES_KEY, name)
        stored = decode_hash(dict(zip(raw[0::2], raw[1::2], strict=True)))
        index = cls(client, info_from_meta(name, stored), ef=ef)
        if index.info.dim != card.embedding_dim:
            raise IndexMismatchError(
                f"index {name!r} version {card.version} has dimension {index.info.dim}, "
                f"the model gives {card.embedding_dim}")
        with guard(client, name):
            index._check_key_types()
        return index

    @staticmethod
    def live_version(client: Client, name: str) -> str | None:
        """The model version queries of index ``name`` use, or None if it has none yet."""
        layout.check_name(name)
        with guard(client, name):
            version = client.get(layout.alias_key(name))
        return version.decode() if version is not None else None

    @staticmethod
    def promote(client: Client, name: str, version: str) -> None:
        """Make ``version`` the live one: one atomic step, so every reader sees the old or the
        new version, never a mix."""
        layout.check_name(name)
        keys = (layout.alias_key(name), layout.meta_key(name, layout.check_version(version)))
        with guard(client, name, version):
            done = client.eval(_PROMOTE, 2, *keys, version)
        if not done:
            raise NotFoundError(f"index {name!r} has no version {version}")

    @classmethod
    def open(cls, client: Client, name: str, version: str, *, ef: int | None = None
             ) -> VectorIndex:
        """A given version of index ``name`` (live or not)."""
        layout.check_name(name)
        layout.check_version(version)
        with guard(client, name, version):
            meta = decode_hash(client.hgetall(layout.meta_key(name, version)))
        if not meta:
            raise NotFoundError(f"index {name!r} has no version {version}")
        meta.setdefault("version", version)
        return cls(client, info_from_meta(name, meta), ef=ef)

    @classmethod
    def live(cls, client: Client, name: str, *, ef: int | None = None) -> VectorIndex:
        """The version of index ``name`` that queries use."""
        version = cls.live_version(client, name)
        if version is None:
            raise IndexNotReadyError(f"index {name!r} does not exist yet: run a worker to fill "
                                     "it")
        try:
            return cls.open(client, name, version, ef=ef)
        except NotFoundError as exc:
            raise NotFoundError(f"index {name!r} points at version {version}, "
                                "which has no metadata") from exc

    def check_model(self, card: ModelCard) -> None:
        if card.version != self.info.version:
            raise IndexMismatchError(
                f"index {self.info.name!r} (live version {self.info.version}) was built by "
                f"another model than {card.version}; embed with the model that built it, or "
                "re-index")
        if card.embedding_dim != self.info.dim:
            raise IndexMismatchError(
                f"index {self.info.name!r} has dimension {self.info.dim}, the model gives "
                f"{card.embedding_dim}")

    # --- errors ----------------------------------------------------------------------------------

    def errors_during(self, action: str):
        info = self.info
        return guard(self.client, info.name, info.version, info.shards,
                      f"index {info.name!r} version {info.version}: {action}")

    def _check_key_types(self) -> None:
        """Refuse early when a key of this version holds something other than ours."""
        info = self.info
        problem = foreign_keys(self.client, info.name, info.version, info.shards)
        if problem:
            raise ConfigError(
                f"index {self.info.name!r}: {problem}; the index name is taken by something "
                "else: choose another --index or delete those keys")

    # --- writes ----------------------------------------------------------------------------------

    def _check_vector(self, vector: np.ndarray) -> np.ndarray:
        try:
            v = np.asarray(vector, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise InputError("vector is not a list of numbers") from exc
        if v.shape[0] != self.info.dim:
            raise IndexMismatchError(
                f"vector has dimension {v.shape[0]}, index {self.info.name!r} has {self.info.dim}")
        # One pass for both checks (a NaN or infinity makes the largest magnitude one too):
        # this runs for every element written.
        largest = float(np.abs(v).max(initial=0.0))
        if not math.isfinite(largest):
            raise InputError("vector contains NaN or infinity")
        if largest == 0.0:
            raise InputError("vector is all zeros: its cosine similarity is undefined")
        return v

    def _check_id(self, image_id: str) -> str:
        return check_id(image_id)

    def _attributes_json(self, image_id: str, attributes: dict[str, Any] | None) -> str:
        attributes, text = checked_attributes_json(attributes or {})
        version = attributes.get("model_version")
        if version is not None and version != self.info.version:
            raise IndexMismatchError(
                f"{quote(image_id)} was embedded by model {quote(version)}, index "
                f"{self.info.name!r} version {self.info.version} holds another model's "
                "embeddings")
        return text

    def upsert_command(self, image_id: str, vector: np.ndarray,
                       attributes: dict[str, Any] | None) -> tuple:
        """The VADD that adds or replaces one element, after checking all of it; raises
        ``InputError`` or ``IndexMismatchError`` for an element that must not be written."""
        key = self.keys[layout.shard_of(self._check_id(image_id), self.info.shards)]
        blob = self._check_vector(vector).astype("<f4").tobytes()
        return ("VADD", key, "FP32", blob, image_id, self.info.quant.upper(),
                "SETATTR", self._attributes_json(image_id, attributes))

    def upsert(self, items: Iterable[tuple[str, np.ndarray, dict[str, Any]]]) -> int:
        """Add or replace elements (idempotent per id), pipelined. The whole batch is checked
        first: if any item is bad, nothing is written."""
        commands = [self.upsert_command(*item) for item in items]
        with self.errors_during("upsert"):
            for start in range(0, len(commands), UPSERT_CHUNK):
                pipe = self.client.pipeline(transaction=False)
                for command in commands[start:start + UPSERT_CHUNK]:
                    pipe.execute_command(*command)
                pipe.execute()
        return len(commands)

    def run_each(self, commands: Sequence[tuple], action: str) -> list[TwinstreamError | None]:
        """Run commands pipelined and say, per command, whether Redis refused it.

        A refusal that belongs to one command (a reply error) is returned in its place, so the
        caller can dead-letter that element and keep the others; a lost connection or a
        passing server state (loading, out of memory, failover) raises ``ServiceUnavailable``
        for the whole batch, which is then retried as a whole (the writes are idempotent).
        """
        outcomes: list[TwinstreamError | None] = []
        with self.errors_during(action):
            for start in range(0, len(commands), UPSERT_CHUNK):
                pipe = self.client.pipeline(transaction=False)
                for command in commands[start:start + UPSERT_CHUNK]:
                    pipe.execute_command(*command)
                outcomes += [self._refusal(r, action) if isinstance(r, Exception) else None
                             for r in pipe.execute(raise_on_error=False)]
        return outcomes

    def _refusal(self, exc: Exception, action: str) -> TwinstreamError:
        try:
            with self.errors_during(action):
                raise exc
        except ServiceUnavailable:
            raise
        except TwinstreamError as err:
            return err
        raise AssertionError("unreachable: errors_during turns every error into ours")

    def delete(self, ids: Sequence[str]) -> int:
        """Remove ids (and their thumbnails); returns how many were present."""
        ids = [self._check_id(i) for i in ids]
        if not ids:
            return 0
        with self.errors_during("delete"):
            pipe = self.client.pipeline(transaction=False)
            for image_id in ids:
                pipe.execute_command("VREM", self._key_of(image_id), image_id)
            pipe.hdel(self.thumbs, *ids)
            return sum(int(r) for r in pipe.execute()[:-1])

    def put_thumbnails(self, thumbnails: dict[str, bytes]) -> None:
        if thumbnails:
            with self.errors_during("store thumbnails"):
                self.client.hset(self.thumbs, mapping=thumbnails)

    def delete_thumbnails(self, ids: Sequence[str]) -> None:
        if ids:
            with self.errors_during("delete thumbnails"):
                self.client.hdel(self.thumbs, *ids)

    def thumbnail(self, image_id: str) -> bytes | None:
        self._check_id(image_id)
        with self.errors_during("read a thumbnail"):
            return self.client.hget(self.thumbs, image_id)

    # --- reads -----------------------------------------------------------------------------------

    def _key_of(self, image_id: str) -> str:
        return self.keys[layout.shard_of(self._check_id(image_id), self.info.shards)]

    def shard_counts(self) -> list[int]:
        with self.errors_during("count"):
            pipe = self.client.pipeline(transaction=False)
            for key in self.keys:
                pipe.execute_command("VCARD", key)
            return [int(n or 0) for n in pipe.execute()]

    def count(self) -> int:
        return sum(self.shard_counts())

    def vector(self, image_id: str) -> np.ndarray | None:
        """The stored (possibly quantized, so approximate) vector of an id."""
        with self.errors_during("read a vector"):
            raw = self.client.execute_command("VEMB", self._key_of(image_id), image_id)
        return None if raw is None else np.array([float(x) for x in raw], dtype=np.float32)

    def attributes(self, image_id: str) -> dict[str, Any] | None:
        with self.errors_during("read attributes"):
            raw = self.client.execute_command("VGETATTR", self._key_of(image_id), image_id)
        if raw is None:
            return None if not self.exists(image_id) else {}
        return parse_attributes(raw)

    def get(self, image_id: str) -> StoredItem | None:
        vector = self.vector(image_id)
        if vector is None:
            return None
        return StoredItem(image_id, vector, self.attributes(image_id) or {})

    def exists(self, image_id: str) -> bool:
        with self.errors_during("check an id"):
            return bool(self.client.execute_command("VISMEMBER", self._key_of(image_id),
                                                    image_id))

    def search(self, vector: np.ndarray, k: int = 10, *, filter: str | None = None,
               ef: int | None = None, exact: bool = False, filter_ef: int | None = None
               ) -> list[Hit]:
        """The ``k`` most similar elements, best first. ``filter``: an attribute expression
        (``.label == "cat" and .source == "cam1"``); ``ef``: exploration factor (higher: better
        recall, slower); ``exact``: a linear scan (Redis TRUTH), the true top-k."""
        options = SearchOptions.build(k, filter, self.ef if ef is None else ef, filter_ef, exact)
        blob = self._check_vector(vector).astype("<f4").tobytes()
        return self._search(options, [("FP32", blob)] * len(self.keys))

    def search_by_id(self, image_id: str, k: int = 10, *, filter: str | None = None,
                     ef: int | None = None, exact: bool = False, filter_ef: int | None = None
                     ) -> list[Hit]:
        """More like this: the ``k`` elements most similar to an indexed id (itself left out)."""
        options = SearchOptions.build(k, filter, self.ef if ef is None else ef, filter_ef, exact)
        self._check_id(image_id)
        owner = layout.shard_of(image_id, self.info.shards)
        queries: list[tuple] = [("ELE", image_id)] * len(self.keys)
        if self.info.shards > 1:  # other shards do not hold the element: send its vector
            vector = self.vector(image_id)
            if vector is None:
                raise NotFoundError(f"no id {quote(image_id)} in index {self.info.name!r}")
            blob = vector.astype("<f4").tobytes()
            queries = [("ELE", image_id) if i == owner else ("FP32", blob)
                       for i in range(len(self.keys))]
        try:
            return self._search(options.with_k(min(k + 1, MAX_K)), queries, exclude=image_id,
                                k=k)
        except NotFoundError as exc:
            raise NotFoundError(f"no id {quote(image_id)} in index {self.info.name!r}") from exc

    def _search(self, options: SearchOptions, queries: list[tuple], exclude: str | None = None,
                k: int | None = None) -> list[Hit]:
        with self.errors_during("search"):
            if len(self.keys) == 1:
                raw = [self.client.execute_command(*options.command(self.keys[0], queries[0]))]
            else:
                pipe = self.client.pipeline(transaction=False)
                for key, query in zip(self.keys, queries, strict=True):
                    pipe.execute_command(*options.command(key, query))
                raw = pipe.execute()
        return merge_hits((parse_hits(r) for r in raw), k or options.k, exclude=exclude)


def guard(client: Client, name: str, version: str | None = None, shards: int = 1,
           context: str | None = None):
    """Redis errors inside become ours; a WRONGTYPE one names the key that holds what."""
    return translate_errors(context or f"index {name!r}",
                            lambda: foreign_keys(client, name, version, shards))


def foreign_keys(client: Client, name: str, version: str | None = None, shards: int = 1) -> str:
    """Which key of an index holds a value of the wrong type (empty when none does)."""
    expected = {layout.alias_key(name): _EXPECTED_TYPES["alias"],
                layout.versions_key(name): _EXPECTED_TYPES["versions"],
                layout.thumbs_key(name): _EXPECTED_TYPES["thumbs"]}
    if version is not None:
        expected[layout.meta_key(name, version)] = _EXPECTED_TYPES["meta"]
        expected.update({key: b"vectorset" for key in layout.shard_keys(name, version, shards)})
    pipe = client.pipeline(transaction=False)
    for key in expected:
        pipe.type(key)
    for (key, want), got in zip(expected.items(), pipe.execute(), strict=True):
        got = got if isinstance(got, bytes) else str(got).encode()
        if got not in (b"none", want):
            return f"Redis key {key} holds a {got.decode()}, not a {want.decode()}"
    return ""
