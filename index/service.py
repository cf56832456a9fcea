"""The one search service: query, recognise, enroll and verify over the live index.

The command line, the HTTP API and the demo all call ``SearchService``, so they give the same
answer and the same refusal for the same request. It knows no transport: it raises the
project's own errors (``twinstream.errors``) and the API maps them to HTTP statuses at its edge
(``api/errors.py``), the CLI to exit codes. Uploaded bytes are decoded under a budget of
concurrent decodes and pixels (``twinstream.budget``), so a server's memory stays bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index.clusters import (
    DEFAULT_MIN_SIZE,
    DEFAULT_NEIGHBOURS,
    DUPLICATE_THRESHOLD,
    Clustering,
    cluster_id,
    discover,
    duplicate_groups,
    enroll_members,
    pair_threshold,
    write_clusters,
)
from index.filters import parse_filter
from index.identities import Identities, Identity
from index.query import MAX_K
from index.recognition import (
    Recognition,
    Verification,
    enroll,
    probability_of,
    recognize,
    resolve_threshold,
)
from index.recognition import verify as verify_vectors
from index.store import Client, Hit, VectorIndex, connect
from twinstream.budget import DecodeBudget
from twinstream.errors import (
    ImageDecodeError,
    IndexMismatchError,
    InputError,
    ModelError,
    NotFoundError,
    ServiceUnavailable,
)
from twinstream.fields import check_attributes, check_id, check_label, quote
from twinstream.messages import content_id
from twinstream.preprocess import decode_image, header_pixels, image_to_array, looks_like_an_image
from twinstream.runtime import Encoder
from twinstream.settings import Settings
from twinstream.thumbnails import make_thumbnail

# How long a looked-up live index is reused; a promote is seen within this time.
INDEX_CACHE_S = 1.0


@dataclass
class Upload:
    """What a request needs of an image, made while the decode budget is held: the encoder
    input and, on request, the thumbnail (the full decoded picture is not kept)."""

    array: np.ndarray | None
    thumbnail: bytes | None = None


@dataclass
class SearchResult:
    hits: list[Hit]
    index: VectorIndex
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def probabilities(self) -> list[float | None]:
        """P(same identity) of each hit, from the index's model card (None: no calibration)."""
        return [probability_of(self.index.info, h.score) for h in self.hits]


@dataclass
class Enrolled:
    ids: list[str]
    label: str
    index: VectorIndex
    references: int = 0  # the identity's references after this enrolment

    @property
    def live(self) -> bool:
        return VectorIndex.live_version(self.index.client, self.index.info.name) == \
            self.index.info.version


@dataclass
class Clusters:
    """A clustering of the live index, the threshold it used and why, and what was written."""

    index: VectorIndex
    clustering: Clustering
    threshold_reason: str
    warning: str | None = None
    written: dict[str, int] | None = None  # with write=True: written, changed_meanwhile, gone


@dataclass
class LabelledCluster:
    cluster: str
    label: str
    ids: list[str]
    index: VectorIndex
    references: int  # the identity's references afterwards
    skipped: list[str] = field(default_factory=list)  # members gone or changed meanwhile


def _as_field(name: str, check: Callable[[Any], Any], value: Any) -> Any:
    """``check(value)``, its refusal naming the request field (the API answers 422 with it)."""
    try:
        return check(value)
    except InputError as exc:
        raise InputError(f"{name}: {exc.message}", field=name) from exc


class SearchService:
    """``settings``: which Redis and index, the limits; ``encoder``: the loaded model (None:
    search by vector or id only). ``observe(stage, seconds)`` hears how long each step took."""

    def __init__(self, settings: Settings, encoder: Encoder | None = None,
                 observe: Callable[[str, float], None] | None = None):
        self.settings = settings
        self.encoder = encoder
        self.observe = observe or (lambda _stage, _seconds: None)
        self.budget = DecodeBudget(settings.api.decode_concurrency,
                                   settings.api.decode_pixel_budget)
        self._lock = threading.Lock()
        self._redis: Client | None = None
        self._index: tuple[float, VectorIndex] | None = None

    # --- connections -----------------------------------------------------------------------------

    def redis(self) -> Client:
        """The Redis client, connected (and checked for vector sets) on first use."""
        with self._lock:
            if self._redis is None:
                self._redis = connect(self.settings.redis.url)
            return self._redis

    def live_index(self, fresh: bool = False) -> VectorIndex:
        """The live version of the index (``IndexNotReadyError`` before any worker filled
        it), looked up again at most every ``INDEX_CACHE_S``."""
        now = time.monotonic()
        cached = self._index
        if not fresh and cached is not None and now - cached[0] < INDEX_CACHE_S:
            return cached[1]
        index = VectorIndex.live(self.redis(), self.settings.redis.index,
                                 ef=self.settings.redis.ef or None)
        self._index = (now, index)
        return index

    def model_index(self) -> VectorIndex:
        """The live index, refusing one built by another model than the loaded one."""
        index = self.live_index()
        index.check_model(self.require_encoder().card)
        return index

    def require_encoder(self) -> Encoder:
        if self.encoder is None:
            raise ModelError("no model loaded: give --model model.onnx (or "
                             "TWINSTREAM_MODEL_PATH) to search by image")
        return self.encoder

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()

    # --- checks ----------------------------------------------------------------------------------

    def check_k(self, k: int) -> int:
        top = min(self.settings.api.max_k, MAX_K)
        if not isinstance(k, int) or not 1 <= k <= top:
            raise InputError(f"k must be between 1 and {top}, got {k}", field="k")
        return k

    @staticmethod
    def check_filter(expression: str | None) -> str | None:
        """The filter as given (stripped), or None; the index's parser says what is wrong."""
        rendered = _as_field("filter", parse_filter, expression)
        return expression.strip() if rendered else None

    @staticmethod
    def check_threshold(threshold: float | None) -> float | None:
        if threshold is not None and not -1.0 <= threshold <= 1.0:  # NaN fails this too
            raise InputError(f"threshold must be a cosine similarity in [-1, 1], got "
                             f"{threshold}", field="threshold")
        return threshold

    @staticmethod
    def check_id(image_id: str) -> str:
        return _as_field("id", check_id, image_id)

    @staticmethod
    def check_label(label: str) -> str:
        return _as_field("label", check_label, label)

    @staticmethod
    def check_attributes(attributes: dict[str, Any] | None) -> dict[str, Any]:
        return _as_field("attributes", check_attributes, attributes or {})

    @staticmethod
    def check_vector(vector: Sequence[float] | np.ndarray, index: VectorIndex) -> np.ndarray:
        v = np.asarray(vector, dtype=np.float32)
        if v.ndim != 1 or v.shape[0] != index.info.dim:
            raise InputError(f"vector has {v.size} values; index {index.info.name!r} has "
                             f"dimension {index.info.dim}", field="vector")
        if not np.all(np.isfinite(v)) or not np.any(v):
            raise InputError("vector must be finite (no NaN or infinity) and not all zeros",
                             field="vector")
        return v

    # --- images ----------------------------------------------------------------------------------

    def prepare(self, data: bytes, what: str = "image", *, embed: bool = True,
                thumbnail: bool = False) -> Upload:
        """Decode an image within the decode budget (``OverloadedError`` when it is spent)
        into what the request needs; ``embed`` False only checks that it decodes. ``what``
        names the image in errors (a field, a file)."""
        spec = self.require_encoder().card.preprocessing if embed else None
        if not data:
            raise ImageDecodeError(f"{what}: the image is empty (0 bytes)", field=what)
        with self.budget.admit(header_pixels(data)):
            try:
                image = decode_image(data, self.settings.worker.max_image_pixels)
            except ImageDecodeError as exc:
                raise ImageDecodeError(f"{what}: {exc.message}", field=what,
                                       not_an_image=not looks_like_an_image(data)) from exc
            try:
                return Upload(image_to_array(image, spec) if spec else None,
                              make_thumbnail(image) if thumbnail else None)
            finally:
                image.close()

    def embed(self, uploads: Sequence[Upload]) -> np.ndarray:
        return self.require_encoder().embed_arrays(np.stack([u.array for u in uploads]))

    def _timed(self, stage: str, timings: dict[str, float], fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
        timings[stage] = round(seconds * 1000, 3)
        self.observe(stage, seconds)
        return result

    def embed_image(self, data: bytes, timings: dict[str, float], what: str = "image"
                    ) -> np.ndarray:
        self.require_encoder()
        return self._timed("decode_embed", timings,
                           lambda: self.embed([self.prepare(data, what)])[0])

    # --- reads -----------------------------------------------------------------------------------

    def _query(self, index: VectorIndex, vector: np.ndarray, k: int, filter: str | None,
               timings: dict[str, float], **options: Any) -> list[Hit]:
        try:
            return self._timed("index_query", timings,
                               lambda: index.search(vector, k=k, filter=filter, **options))
        except InputError as exc:
            if filter is None:
                raise
            # Our parser passed it, but Redis's grammar is the final judge.
            message = exc.message.splitlines()[0]
            raise InputError(f"filter: {message}", field="filter") from exc

    def search_image(self, data: bytes, k: int = 10, filter: str | None = None, *,
                     what: str = "image", **options: Any) -> SearchResult:
        """Nearest items to an image (``what`` names it in errors). ``options``: ``exact``,
        ``filter_ef`` of the index."""
        k, filter = self.check_k(k), self.check_filter(filter)
        timings: dict[str, float] = {}
        index = self.model_index()
        vector = self.embed_image(data, timings, what)
        return SearchResult(self._query(index, vector, k, filter, timings, **options), index,
                            timings)

    def search_vector(self, vector: Sequence[float] | np.ndarray, k: int = 10,
                      filter: str | None = None, **options: Any) -> SearchResult:
        k, filter = self.check_k(k), self.check_filter(filter)
        timings: dict[str, float] = {}
        index = self.live_index()
        v = self.check_vector(vector, index)
        return SearchResult(self._query(index, v, k, filter, timings, **options), index,
                            timings)

    def search_like(self, image_id: str, k: int = 10, filter: str | None = None,
                    **options: Any) -> SearchResult:
        """More like an item already indexed: the ``k`` items nearest to it, itself left out
        (the CLI did this; the API used to return the item itself first)."""
        k, filter = self.check_k(k), self.check_filter(filter)
        self.check_id(image_id)
        timings: dict[str, float] = {}
        index = self.live_index()
        try:
            hits = self._timed("index_query", timings, lambda: index.search_by_id(
                image_id, k=k, filter=filter, **options))
        except InputError as exc:
            if filter is None:
                raise
            raise InputError(f"filter: {exc.message.splitlines()[0]}", field="filter") from exc
        return SearchResult(hits, index, timings)

    def item(self, image_id: str, with_vector: bool = False
             ) -> tuple[VectorIndex, dict[str, Any], np.ndarray | None]:
        self.check_id(image_id)
        index = self.live_index()
        attrs = index.attributes(image_id)
        if attrs is None:
            raise NotFoundError(f"no item {quote(image_id)} in index {index.info.name!r}")
        return index, attrs, index.vector(image_id) if with_vector else None

    def thumbnail(self, image_id: str) -> bytes:
        self.check_id(image_id)
        jpeg = self.live_index().thumbnail(image_id)
        if jpeg is None:
            raise NotFoundError(f"no thumbnail for item {quote(image_id)}")
        return jpeg

    def recognize(self, data: bytes, k: int = 5, threshold: float | None = None,
                  filter: str | None = None, *, target_fpir: float | None = None,
                  what: str = "image") -> tuple[Recognition, VectorIndex, dict]:
        """Who is this, or unknown: the nearest identity's prototype against the threshold
        (given, or the card's for this many identities at ``target_fpir``, default the
        ``TWINSTREAM_RECOGNIZE_TARGET_FPIR`` setting)."""
        k, threshold = self.check_k(k), self.check_threshold(threshold)
        target = self.check_target_fpir(target_fpir)
        filter = self.check_filter(filter)
        timings: dict[str, float] = {}
        index = self.model_index()
        vector = self.embed_image(data, timings, what)
        result = self._timed("index_query", timings, lambda: recognize(
            index, vector, threshold, k, target_fpir=target, filter=filter))
        return result, index, timings

    def check_target_fpir(self, target_fpir: float | None) -> float:
        target = self.settings.recognize.target_fpir if target_fpir is None else target_fpir
        if not 0 < target < 1:  # NaN fails this too
            raise InputError(f"target FPIR (the share of strangers accepted) must be between "
                             f"0 and 1, exclusive, got {target_fpir}", field="target_fpir")
        return target

    def verify(self, a: bytes, b: bytes, threshold: float | None = None, *,
               names: tuple[str, str] = ("a", "b")) -> Verification:
        threshold = self.check_threshold(threshold)
        encoder = self.require_encoder()
        va, vb = self.embed([self.prepare(a, names[0]), self.prepare(b, names[1])])
        return verify_vectors(va, vb, resolve_threshold(encoder.card.threshold, threshold),
                              encoder.card)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {}
        try:
            self.redis().ping()
            checks["redis"] = {"ok": True}
        except Exception as exc:  # any failure to reach Redis is a "not ready", never a 500
            checks["redis"] = {"ok": False, "error": str(exc).splitlines()[0]}
        checks["model"] = ({"ok": True, "version": self.encoder.version,
                            "dim": self.encoder.dim, "provider": self.encoder.provider,
                            "providers": list(self.encoder.providers)} if self.encoder else
                           {"ok": False, "error": "no model loaded (--model)"})
        if checks["redis"]["ok"]:
            try:
                index = self.live_index(fresh=True)  # readiness must not be stale
                matches = self.encoder is None or self.encoder.version == index.info.version
                checks["index"] = {"ok": matches, "name": index.info.name,
                                   "version": index.info.version, "count": index.count(),
                                   "dim": index.info.dim}
                if not matches:
                    checks["index"]["error"] = "the live index was built by another model"
            except (ServiceUnavailable, NotFoundError) as exc:
                checks["index"] = {"ok": False, "error": str(exc).splitlines()[0]}
        else:
            checks["index"] = {"ok": False, "error": "Redis unreachable"}
        return all(c["ok"] for c in checks.values()), checks

    # --- writes ----------------------------------------------------------------------------------

    def enroll(self, images: Sequence[bytes], label: str, image_id: str | None = None,
               attributes: dict[str, Any] | None = None,
               per_image: Sequence[dict[str, Any]] | None = None,
               names: Sequence[str] | None = None) -> Enrolled:
        """Add reference images of ``label`` now (no Kafka round trip). Everything is checked
        (label, ids, attributes, decoding, the model against the live index) before anything is
        written; the thumbnail goes in before the element, as the workers do it.
        ``per_image``: extra attributes of each image; ``names``: how errors name them."""
        encoder = self.require_encoder()
        label = self.check_label(label)
        if image_id is not None:
            self.check_id(image_id)
            if len(images) != 1:
                raise InputError("an id names a single image; leave it out when enrolling "
                                 "several", field="id")
        attributes = self.check_attributes(attributes)
        extras = [self.check_attributes(a) for a in (per_image or [{}] * len(images))]
        names = list(names or ["image"] * len(images))
        client = self.redis()
        live = VectorIndex.live_version(client, self.settings.redis.index)
        if live is not None and live != encoder.version:
            raise IndexMismatchError(
                f"index {self.settings.redis.index!r} is live at model version {live}; this "
                f"model is {encoder.version}: enroll with the model that built it, or re-index")
        uploads = [self.prepare(data, name, thumbnail=True)
                   for data, name in zip(images, names, strict=True)]
        vectors = self.embed(uploads)
        index = VectorIndex.for_settings(client, self.settings.redis, encoder.card)
        ids = [self.check_id(image_id or content_id(data)) for data in images]
        index.put_thumbnails({i: u.thumbnail for i, u in zip(ids, uploads, strict=True)})
        for i, vector, extra in zip(ids, vectors, extras, strict=True):
            enroll(index, i, vector, label, {**attributes, **extra})
        identity = Identities(index).get(label)
        return Enrolled(ids, label, index, identity.references if identity else 0)

    # --- clusters (discovering identities) --------------------------------------------------------

    def clusters(self, threshold: float | None = None, min_size: int = DEFAULT_MIN_SIZE, *,
                 unlabeled_only: bool = False, neighbours: int = DEFAULT_NEIGHBOURS,
                 resolution: float | None = None, write: bool = False,
                 progress: Callable | None = None) -> Clusters:
        """Groups of items of the live index that look like one identity (``index.clusters``):
        neighbours at or above ``threshold`` (default: the model card's pair threshold), then
        Leiden communities; with ``write``, each item's ``cluster`` attribute is set."""
        index = self.live_index(fresh=True)
        threshold, reason, warning = pair_threshold(index.info, self.check_threshold(threshold))
        clustering = discover(index, threshold, min_size=min_size,
                              unlabeled_only=unlabeled_only, neighbours=neighbours,
                              resolution=resolution, ef=self.settings.redis.ef or None,
                              progress=progress)
        written = write_clusters(index, clustering) if write else None
        return Clusters(index, clustering, reason, warning, written)

    def duplicates(self, threshold: float = DUPLICATE_THRESHOLD, *,
                   neighbours: int = DEFAULT_NEIGHBOURS, progress: Callable | None = None
                   ) -> tuple[VectorIndex, Clustering]:
        """Groups of near-duplicate items (cosine at or above ``threshold``, chained)."""
        threshold = self.check_threshold(threshold)
        index = self.live_index(fresh=True)
        return index, duplicate_groups(index, threshold, neighbours=neighbours,
                                       ef=self.settings.redis.ef or None, progress=progress)

    @staticmethod
    def check_cluster_id(value: str) -> str:
        if not isinstance(value, str) or len(value) != 13 or not value.startswith("c") \
                or any(ch not in "0123456789abcdef" for ch in value[1:]):
            raise InputError(f"cluster id must be 'c' and 12 hex digits (as listed by "
                             f"'twinstream cluster'), got {value!r:.40}", field="cluster")
        return value

    def label_cluster(self, cluster: str, label: str, ids: Sequence[str] | None = None, *,
                      threshold: float | None = None, min_size: int = DEFAULT_MIN_SIZE,
                      unlabeled_only: bool = False, neighbours: int = DEFAULT_NEIGHBOURS,
                      resolution: float | None = None) -> LabelledCluster:
        """Enroll the members of a cluster as one identity ``label``: each member gets the
        label (and the cluster) in its attributes and becomes a reference of the identity
        (``Identities.add``: the prototype is the normalised mean of the members' stored
        vectors). ``ids``: the members as the caller saw them (their hash must be the cluster
        id); without them the clusters are computed again with the same options."""
        cluster, label = self.check_cluster_id(cluster), self.check_label(label)
        if ids is not None:
            members = sorted({self.check_id(i) for i in ids})
            if cluster_id(members) != cluster:
                raise InputError(f"these {len(members)} ids are not cluster {cluster} (a "
                                 "cluster's id is a hash of its members): the clusters changed; "
                                 "list them again", field="ids")
            index = self.live_index(fresh=True)
        else:
            found = self.clusters(threshold, min_size, unlabeled_only=unlabeled_only,
                                  neighbours=neighbours, resolution=resolution)
            match = [c for c in found.clustering.clusters if c.id == cluster]
            if not match:
                raise NotFoundError(f"no cluster {cluster} in index "
                                    f"{found.index.info.name!r} now (the items changed, or "
                                    "other options made it): list the clusters again")
            index, members = found.index, sorted(match[0].members)
        done, skipped, references = enroll_members(index, cluster, label, members)
        if not done:
            raise NotFoundError(f"none of the {len(members)} items of cluster {cluster} is in "
                                f"index {index.info.name!r} any more")
        return LabelledCluster(cluster, label, done, index, references, skipped)

    # --- identities ------------------------------------------------------------------------------

    def identities(self) -> tuple[VectorIndex, list[Identity]]:
        index = self.live_index()
        return index, Identities(index).list()

    def identity(self, label: str) -> tuple[VectorIndex, Identity, dict[str, dict[str, Any]]]:
        """An identity and its references (id -> attributes)."""
        label = self.check_label(label)
        index = self.live_index()
        identities = Identities(index)
        found = identities.get(label)
        if found is None:
            raise NotFoundError(f"no identity {quote(label)} in index {index.info.name!r}")
        refs = {ref: index.attributes(ref) or {} for ref in sorted(identities.references(label))}
        return index, found, refs

    def remove_identity(self, label: str) -> tuple[VectorIndex, list[str]]:
        """Remove an identity and its reference images from the index."""
        label = self.check_label(label)
        index = self.live_index()
        return index, Identities(index).remove(label)
