"""What the HTTP endpoints do, as plain blocking methods (the routes run them in worker threads).

One ``SearchService`` per process holds the loaded encoder, a Redis client and (created on first
use) a Kafka producer. It knows nothing about HTTP except ``ApiError`` for the client's mistakes,
so it can be exercised directly and the routes stay thin.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from api.budget import DecodeBudget
from api.errors import ApiError
from api.images import decode_upload
from api.metrics import ApiMetrics
from index.filters import parse_filter
from index.recognition import enroll, recognize, resolve_threshold, verify
from index.store import Hit, VectorIndex, connect
from twinstream.errors import InputError, NotFoundError, ServiceUnavailable
from twinstream.fields import check_id, check_label, parse_attributes, quote
from twinstream.messages import ImageMessage, content_id, now_ms
from twinstream.preprocess import header_pixels, image_to_array
from twinstream.runtime import Encoder
from twinstream.settings import Settings
from twinstream.thumbnails import make_thumbnail

# How long a looked-up live index is reused; a promote is seen within this time.
INDEX_CACHE_S = 1.0
# Kafka's request limit (worker.kafka_io.MAX_REQUEST_BYTES) less room for headers.
MAX_INLINE_BYTES = 4 * 1024 * 1024 - 64 * 1024
PUBLISH_TIMEOUT_S = 15.0


@dataclass
class Upload:
    """What a request needs of an uploaded image, made while the decode budget is held: the
    encoder input and, on request, the thumbnail (the full decoded picture is not kept)."""

    array: np.ndarray | None
    thumbnail: bytes | None = None


@dataclass
class SearchResult:
    hits: list[Hit]
    index: VectorIndex
    timings_ms: dict[str, float] = field(default_factory=dict)


class SearchService:
    def __init__(self, settings: Settings, encoder: Encoder | None = None,
                 metrics: ApiMetrics | None = None):
        self.settings = settings
        self.encoder = encoder
        self.metrics = metrics or ApiMetrics()
        self._lock = threading.Lock()
        self._redis: redis.Redis | None = None
        self._producer = None
        self._index: tuple[float, VectorIndex] | None = None
        self.budget = DecodeBudget(settings.api.decode_concurrency,
                                   settings.api.decode_pixel_budget)
        if encoder is not None:
            self.metrics.model.labels(encoder.version).set(1)

    # --- connections -----------------------------------------------------------------------------

    def redis(self) -> redis.Redis:
        """The Redis client, connected (and checked for vector sets) on first use."""
        with self._lock:
            if self._redis is None:
                self._redis = connect(self.settings.redis.url)
            return self._redis

    def live_index(self) -> VectorIndex:
        now = time.monotonic()
        cached = self._index
        if cached is not None and now - cached[0] < INDEX_CACHE_S:
            return cached[1]
        try:
            index = VectorIndex.live(self.redis(), self.settings.redis.index)
        except NotFoundError as exc:
            raise ServiceUnavailable(exc.message) from None  # not ready yet, not a bad request
        self._index = (now, index)
        return index

    def model_index(self) -> VectorIndex:
        """The live index, refusing one built by another model than the loaded one."""
        index = self.live_index()
        index.check_model(self.require_encoder().card)
        return index

    def require_encoder(self) -> Encoder:
        if self.encoder is None:
            raise ApiError(503, "no model loaded: start the server with --model model.onnx "
                                "(or TWINSTREAM_MODEL_PATH) to search by image")
        return self.encoder

    def producer(self):
        from worker.kafka_io import ensure_topics, make_producer

        with self._lock:
            if self._producer is None:
                ensure_topics(self.settings.kafka)
                self._producer = make_producer(self.settings.kafka)
            return self._producer

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
        if self._redis is not None:
            self._redis.close()

    # --- validation ------------------------------------------------------------------------------

    def check_k(self, k: int) -> int:
        if not 1 <= k <= self.settings.api.max_k:
            raise ApiError(422, f"k must be between 1 and {self.settings.api.max_k}, got {k}",
                           [{"field": "k", "message": "out of range"}])
        return k

    @staticmethod
    def check_filter(expression: str | None) -> str | None:
        """The filter as given (stripped), or None; the index's parser says what is wrong."""
        try:
            return expression.strip() if parse_filter(expression) else None
        except InputError as exc:
            raise ApiError(422, f"filter: {exc}", [{"field": "filter", "message": str(exc)}]
                           ) from None

    @staticmethod
    def check_threshold(threshold: float | None) -> float | None:
        if threshold is not None and not -1.0 <= threshold <= 1.0:  # NaN fails this too
            raise ApiError(422, f"threshold must be a cosine similarity in [-1, 1], "
                                f"got {threshold}",
                           [{"field": "threshold", "message": "out of range"}])
        return threshold

    def check_vector(self, vector: list[float], index: VectorIndex) -> np.ndarray:
        v = np.asarray(vector, dtype=np.float32)
        if v.ndim != 1 or v.shape[0] != index.info.dim:
            raise ApiError(422, f"vector has {v.size} values; index {index.info.name!r} has "
                                f"dimension {index.info.dim}",
                           [{"field": "vector", "message": "wrong dimension"}])
        if not np.all(np.isfinite(v)) or not np.any(v):
            raise ApiError(422, "vector must be finite and not all zeros",
                           [{"field": "vector", "message": "not finite or zero"}])
        return v

    # --- embedding -------------------------------------------------------------------------------

    def prepare(self, data: bytes, field: str = "image", *, embed: bool = True,
                thumbnail: bool = False) -> Upload:
        """Decode an upload within the decode budget (503 when it is full) into what the
        request needs; ``embed`` False only checks that it decodes."""
        spec = self.require_encoder().card.preprocessing if embed else None
        with self.budget.admit(header_pixels(data)):
            image = decode_upload(data, self.settings.worker.max_image_pixels, field)
            try:
                return Upload(image_to_array(image, spec) if spec else None,
                              make_thumbnail(image) if thumbnail else None)
            finally:
                image.close()

    def embed(self, uploads: list[Upload]) -> np.ndarray:
        return self.require_encoder().embed_arrays(np.stack([u.array for u in uploads]))

    def _timed(self, stage: str, timings: dict[str, float], fn, *args):
        started = time.perf_counter()
        result = fn(*args)
        seconds = time.perf_counter() - started
        timings[stage] = round(seconds * 1000, 3)
        self.metrics.stage.labels(stage).observe(seconds)
        return result

    def embed_upload(self, data: bytes, timings: dict[str, float]) -> np.ndarray:
        self.require_encoder()
        return self._timed("decode_embed", timings,
                           lambda: self.embed([self.prepare(data)])[0])

    # --- reads -----------------------------------------------------------------------------------

    def _query(self, index: VectorIndex, vector: np.ndarray, k: int, filter: str | None,
               timings: dict[str, float]) -> list[Hit]:
        try:
            return self._timed("index_query", timings,
                               lambda: index.search(vector, k=k, filter=filter))
        except InputError as exc:
            if filter is None:
                raise
            # Our parser passed it, but Redis's grammar is the final judge.
            message = str(exc).splitlines()[0]
            raise ApiError(422, f"filter: {message}",
                           [{"field": "filter", "message": message}]) from None

    def search_image(self, data: bytes, k: int, filter: str | None) -> SearchResult:
        timings: dict[str, float] = {}
        index = self.model_index()
        vector = self.embed_upload(data, timings)
        return SearchResult(self._query(index, vector, k, filter, timings), index, timings)

    def search_vector(self, vector: list[float], k: int, filter: str | None) -> SearchResult:
        timings: dict[str, float] = {}
        index = self.live_index()
        v = self.check_vector(vector, index)
        return SearchResult(self._query(index, v, k, filter, timings), index, timings)

    def search_like(self, image_id: str, k: int, filter: str | None) -> SearchResult:
        """More like an item already indexed (its stored vector is the query)."""
        timings: dict[str, float] = {}
        self.check_id(image_id)
        index = self.live_index()
        vector = index.vector(image_id)
        if vector is None:
            raise ApiError(404, f"no item {quote(image_id)} in index {index.info.name!r}")
        return SearchResult(self._query(index, vector, k, filter, timings), index, timings)

    def item(self, image_id: str, with_vector: bool = False) -> tuple[VectorIndex, dict, Any]:
        self.check_id(image_id)
        index = self.live_index()
        attrs = index.attributes(image_id)
        if attrs is None:
            raise ApiError(404, f"no item {quote(image_id)} in index {index.info.name!r}")
        vector = index.vector(image_id) if with_vector else None
        return index, attrs, vector

    def thumbnail(self, image_id: str) -> bytes:
        self.check_id(image_id)
        jpeg = self.live_index().thumbnail(image_id)
        if jpeg is None:
            raise ApiError(404, f"no thumbnail for item {quote(image_id)}")
        return jpeg

    def recognize(self, data: bytes, k: int, threshold: float | None):
        timings: dict[str, float] = {}
        index = self.model_index()
        vector = self.embed_upload(data, timings)
        result = self._timed("index_query", timings, recognize, index, vector, threshold, k)
        return result, index, timings

    def verify(self, a: bytes, b: bytes, threshold: float | None):
        encoder = self.require_encoder()
        va, vb = self.embed([self.prepare(a, "a"), self.prepare(b, "b")])
        return verify(va, vb, resolve_threshold(encoder.card.threshold, threshold))

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {}
        try:
            self.redis().ping()
            checks["redis"] = {"ok": True}
        except (redis.RedisError, ServiceUnavailable) as exc:
            checks["redis"] = {"ok": False, "error": str(exc).splitlines()[0]}
        checks["model"] = ({"ok": True, "version": self.encoder.version,
                            "dim": self.encoder.dim} if self.encoder else
                           {"ok": False, "error": "no model loaded (--model)"})
        if checks["redis"]["ok"]:
            try:
                self._index = None  # always look again: readiness must not be stale
                index = self.live_index()
                matches = self.encoder is None or self.encoder.version == index.info.version
                checks["index"] = {"ok": matches, "name": index.info.name,
                                   "version": index.info.version, "count": index.count(),
                                   "dim": index.info.dim}
                if not matches:
                    checks["index"]["error"] = "the live index was built by another model"
            except (ServiceUnavailable, redis.RedisError) as exc:
                checks["index"] = {"ok": False, "error": str(exc).splitlines()[0]}
        else:
            checks["index"] = {"ok": False, "error": "Redis unreachable"}
        return all(c["ok"] for c in checks.values()), checks

    # --- writes ----------------------------------------------------------------------------------

    @staticmethod
    def parse_attributes(text: str | None, label: str | None) -> dict[str, Any]:
        """Form fields ``attributes`` (a JSON object) and ``label``, checked like a record's."""
        try:
            attrs = parse_attributes(text)
        except InputError as exc:
            raise ApiError(422, f"attributes: {exc.message}",
                           [{"field": "attributes", "message": exc.message}]) from exc
        if label is not None and label.strip():
            attrs["label"] = SearchService.check_label(label)
        return attrs

    @staticmethod
    def check_label(label: str) -> str:
        try:
            return check_label(label)
        except InputError as exc:
            raise ApiError(422, f"label: {exc.message}",
                           [{"field": "label", "message": exc.message}]) from exc

    @staticmethod
    def check_id(image_id: str) -> str:
        try:
            return check_id(image_id)
        except InputError as exc:
            raise ApiError(422, f"id: {exc.message}",
                           [{"field": "id", "message": exc.message}]) from exc

    def enroll(self, data: bytes, label: str, image_id: str | None,
               attributes: dict[str, Any]) -> tuple[str, VectorIndex]:
        encoder = self.require_encoder()
        label = self.check_label(label)
        if image_id is not None:
            self.check_id(image_id)
        upload = self.prepare(data, thumbnail=True)
        vector = self.embed([upload])[0]
        image_id = self.check_id(image_id or content_id(data))
        client = self.redis()
        live = VectorIndex.live_version(client, self.settings.redis.index)
        if live is not None and live != encoder.version:
            raise ApiError(409, f"index {self.settings.redis.index!r} is live at model version "
                                f"{live}; this server's model is {encoder.version}")
        index = VectorIndex.for_settings(client, self.settings.redis, encoder.card)
        index.put_thumbnails({image_id: upload.thumbnail})
        enroll(index, image_id, vector, label, attributes)
        return image_id, index

    def ingest(self, uploads: list[tuple[bytes, str]], image_id: str | None,
               attributes: dict[str, Any]) -> list[str]:
        """Publish images (bytes, content type) for the workers to embed; returns their ids once
        the broker has them. All are checked before any is published: all or nothing."""
        messages = []
        for data, content_type in uploads:
            if len(data) > MAX_INLINE_BYTES:
                raise ApiError(413, f"image is {len(data):,} bytes; at most "
                                    f"{MAX_INLINE_BYTES:,} can be published inline (use "
                                    "'twinstream ingest' with a shared volume for larger ones)")
            self.prepare(data, embed=False)  # refuse now what a worker would dead-letter later
            messages.append(ImageMessage(
                id=self.check_id(image_id or content_id(data)), data=data,
                content_type=content_type, attributes={"source": "api", **attributes},
                produced_at_ms=now_ms()))
        for message in messages:
            self._publish(message)
            self.metrics.published.labels("image").inc()
        return [m.id for m in messages]

    def delete(self, image_id: str) -> bool:
        """Publish a tombstone; returns whether the id is in the live index right now."""
        self.check_id(image_id)
        try:
            indexed = self.live_index().exists(image_id)
        except ServiceUnavailable:
            indexed = False  # no index yet: the tombstone still orders after a pending image
        self._publish(ImageMessage(id=image_id, data=None, produced_at_ms=now_ms()))
        self.metrics.published.labels("tombstone").inc()
        return indexed

    def _publish(self, message: ImageMessage) -> None:
        key, value, headers = message.to_record()
        future = self.producer().send(self.settings.kafka.topic, key=key, value=value,
                                      headers=headers)
        future.get(timeout=PUBLISH_TIMEOUT_S)
