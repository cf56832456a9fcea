"""A Python client of the HTTP API (``twinstream serve``): typed results, the API's errors as
exceptions.

    from twinstream.client import Client

    with Client("http://127.0.0.1:8000", token=None) as api:
        for hit in api.search("photo.jpg", k=5).hits:
            print(hit.id, hit.score, hit.probability, hit.attributes.get("label"))
        answer = api.recognize("visitor.jpg", target_fpir=0.01)
        print(answer.label, answer.probability, answer.threshold_reason)

It mirrors the routes of ``api/routes.py`` one method each and needs only httpx (the ``client``
extra): no torch, no onnxruntime, nothing of the server. Every error body
``{"error", "message", "status", "detail"}`` becomes an ``ApiError`` whose class is also the
project's matching ``twinstream.errors`` class (a 404 is a ``NotFoundError``, a 503 a
``ServiceUnavailable``...), so code that handles the CLI's errors handles these too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeAlias
from urllib.parse import quote

try:
    import httpx
except ImportError as exc:  # the serving install has no httpx; say what to install
    raise ImportError("twinstream.client needs httpx: pip install 'twinstream[client]'") from exc

from twinstream.errors import (
    ConfigError,
    ImageDecodeError,
    IndexMismatchError,
    InputError,
    InternalError,
    NotFoundError,
    OverloadedError,
    ServiceUnavailable,
    TooLargeError,
    TwinstreamError,
)

DEFAULT_URL = "http://127.0.0.1:8000"

# An image: its bytes, a path to it, or an open binary file.
Image: TypeAlias = bytes | str | os.PathLike | IO[bytes]


# --- errors ------------------------------------------------------------------------------------

class ApiError(TwinstreamError):
    """An error answer of the API: ``status`` (HTTP), ``error`` (its code, e.g. ``not_found``),
    ``message`` (one line), ``detail`` (422: the fields at fault). Each subclass is also the
    project's matching error class, with the CLI's exit code."""

    def __init__(self, message: str, status: int = 0, error: str = "error",
                 detail: Any = None, *, field: str | None = None, retry_after_s: int = 1):
        TwinstreamError.__init__(self, message)
        self.status = status
        self.error = error
        self.detail = detail
        self.field = field  # InputError's attribute: the request field at fault, if named
        self.retry_after_s = retry_after_s  # OverloadedError's attribute
        self.not_an_image = status == 415  # ImageDecodeError's attribute


class BadRequestError(ApiError, InputError):
    """400: an image that does not decode, a body that is not valid JSON."""


class UnauthorizedError(ApiError, ConfigError):
    """401: the write endpoint needs the server's bearer token (``Client(token=...)``)."""


class ApiNotFoundError(ApiError, NotFoundError):
    """404: no such id or identity."""


class ModelMismatchError(ApiError, IndexMismatchError):
    """409: the live index was built by another model than the server's."""


class PayloadTooLargeError(ApiError, TooLargeError):
    """413: the upload is over the server's limit."""


class NotAnImageError(ApiError, ImageDecodeError):
    """415: the bytes are not an image at all, or the body is neither multipart nor JSON."""


class InvalidRequestError(ApiError, InputError):
    """422: a field is wrong (``k``, a filter, a threshold, a vector...); ``field`` names it."""


class ApiUnavailableError(ApiError, ServiceUnavailable):
    """503: Redis or Kafka down, no model or no index yet; or the server cannot be reached
    (``status`` 0)."""


class ApiOverloadedError(ApiError, OverloadedError):
    """503 with ``Retry-After``: the server's decode budget is full; retry after
    ``retry_after_s`` seconds."""


class ApiTimeoutError(ApiError, ServiceUnavailable):
    """504: the request took longer than the server's ``TWINSTREAM_API_REQUEST_TIMEOUT_S``; or
    the client's own timeout ran out (``status`` 0)."""


class ServerError(ApiError, InternalError):
    """500 (a bug in the server; its log has the traceback) or any other unexpected status."""


ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError, 401: UnauthorizedError, 404: ApiNotFoundError,
    409: ModelMismatchError, 413: PayloadTooLargeError, 415: NotAnImageError,
    422: InvalidRequestError, 503: ApiUnavailableError, 504: ApiTimeoutError,
}


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for an error answer, from its JSON body (or its status alone)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    status = response.status_code
    message = str(body.get("message") or f"HTTP {status} {response.reason_phrase}")
    detail = body.get("detail")
    fields = [d.get("field") for d in detail if isinstance(d, dict)] if isinstance(
        detail, list) else []
    retry_after = response.headers.get("retry-after")
    cls = ERRORS_BY_STATUS.get(status, BadRequestError if 400 <= status < 500 else ServerError)
    if status == 503 and retry_after is not None:
        cls = ApiOverloadedError
    return cls(message, status, str(body.get("error") or "error"), detail,
               field=next((f for f in fields if f), None),
               retry_after_s=_seconds(retry_after))


def _seconds(value: str | None) -> int:
    try:
        return max(0, int(value)) if value is not None else 1
    except ValueError:  # an HTTP date: not what this server sends
        return 1


# --- results -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hit:
    """One search result: ``score`` is the cosine (-1..1), ``probability`` P(same identity) from
    the model card's calibration (None for a model without one)."""

    id: str
    score: float
    probability: float | None
    attributes: dict[str, Any]
    thumbnail_url: str


@dataclass(frozen=True)
class IndexRef:
    name: str
    version: str
    dim: int


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    k: int
    filter: str | None
    model_version: str
    index: IndexRef
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class Identity:
    label: str
    references: int
    thumbnail_url: str


@dataclass(frozen=True)
class IdentityMatch:
    """An identity as a recognition candidate: ``score`` against its prototype."""

    label: str
    references: int
    thumbnail_url: str
    score: float
    probability: float | None


@dataclass(frozen=True)
class Recognition:
    """``label`` is the identity, or ``"unknown"`` (then ``known`` is False);
    ``threshold_reason`` says which threshold was used and why."""

    label: str
    known: bool
    score: float
    probability: float | None
    threshold: float
    threshold_reason: str
    gallery_size: int
    warning: str | None
    best: IdentityMatch | None
    hits: list[IdentityMatch]
    model_version: str
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class Verification:
    score: float
    probability: float | None
    threshold: float
    same: bool
    model_version: str


@dataclass(frozen=True)
class Enrollment:
    """``ids`` of the references this call enrolled; ``references``: the identity's total."""

    id: str
    ids: list[str]
    label: str
    references: int
    model_version: str
    index: str


@dataclass(frozen=True)
class IdentityList:
    index: str
    model_version: str
    identities: list[Identity]


@dataclass(frozen=True)
class IdentityDetail:
    label: str
    references: int
    thumbnail_url: str
    index: str
    model_version: str
    reference_ids: list[str]


@dataclass(frozen=True)
class IdentityRemoval:
    label: str
    removed_references: list[str]


@dataclass(frozen=True)
class Item:
    id: str
    model_version: str
    attributes: dict[str, Any]
    thumbnail_url: str
    vector: list[float] | None = None


@dataclass(frozen=True)
class Queued:
    """What ``ingest`` published (the workers index it shortly): ``ids`` and the topic."""

    ids: list[str]
    topic: str
    status: str = "queued"


@dataclass(frozen=True)
class Deletion:
    """A tombstone published; ``indexed``: whether the id was in the live index then."""

    id: str
    indexed: bool
    topic: str
    status: str = "queued"


@dataclass(frozen=True)
class ClusterMember:
    id: str
    label: str | None
    thumbnail_url: str


@dataclass(frozen=True)
class Cluster:
    """A group of items the model sees as one identity (or copies of one image). ``id`` is a
    hash of the members: the same group has the same id in every listing."""

    id: str
    size: int
    cohesion: float
    labels: dict[str, int]
    cover: ClusterMember
    members: list[ClusterMember]


@dataclass(frozen=True)
class Clustering:
    """``clusters`` largest first (at most the ``limit`` asked); ``total_clusters`` in all."""

    index: str
    model_version: str
    method: str
    resolution: float | None
    threshold: float
    threshold_reason: str
    warning: str | None
    items: int
    clustered: int
    edges: int
    total_clusters: int
    clusters: list[Cluster]


@dataclass(frozen=True)
class ClusterLabelling:
    """``ids`` enrolled as references of ``label``; ``skipped``: deleted or changed meanwhile."""

    cluster: str
    label: str
    ids: list[str]
    references: int
    skipped: list[str]
    model_version: str


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, Any] = field(default_factory=dict)


def _member(d: Mapping[str, Any]) -> ClusterMember:
    return ClusterMember(d["id"], d.get("label"), d["thumbnail_url"])


def _clustering(body: Mapping[str, Any]) -> Clustering:
    clusters = [Cluster(c["id"], c["size"], c["cohesion"], c["labels"], _member(c["cover"]),
                        [_member(m) for m in c["members"]]) for c in body["clusters"]]
    return Clustering(body["index"], body["model_version"], body["method"],
                      body.get("resolution"), body["threshold"], body["threshold_reason"],
                      body.get("warning"), body["items"], body["clustered"], body["edges"],
                      body["total_clusters"], clusters)


def _hit(d: Mapping[str, Any]) -> Hit:
    return Hit(d["id"], d["score"], d.get("probability"), d.get("attributes") or {},
               d["thumbnail_url"])


def _identity(d: Mapping[str, Any]) -> Identity:
    return Identity(d["label"], d["references"], d["thumbnail_url"])


def _match(d: Mapping[str, Any]) -> IdentityMatch:
    return IdentityMatch(d["label"], d["references"], d["thumbnail_url"], d["score"],
                         d.get("probability"))


# --- the client --------------------------------------------------------------------------------

class Client:
    """The HTTP API of one ``twinstream serve``.

    ``token``: the bearer token of the write endpoints (enroll, ingest, deletes), when the server
    has one. ``timeout``: seconds per request. ``http``: an ``httpx.Client`` of your own (its
    ``base_url`` is used; the token is then yours to set)."""

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None,
                 timeout: float = 30.0, http: httpx.Client | None = None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._owned = http is None
        self.http = http or httpx.Client(base_url=url.rstrip("/"), timeout=timeout,
                                         headers=headers)

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- search

    def search(self, image: Image, k: int = 10, filter: str | None = None) -> SearchResult:
        """The ``k`` items nearest to an image (bytes, a path or an open file); ``filter`` is an
        attribute filter such as ``.label == "cat" and .year >= 2020``."""
        data = {"k": str(k)} | ({"filter": filter} if filter is not None else {})
        return self._search(self._post("/search", data=data, files=[_file("image", image)]))

    def search_vector(self, vector: Sequence[float] | Any, k: int = 10,
                      filter: str | None = None) -> SearchResult:
        """The ``k`` items nearest to an embedding (a sequence of floats or a numpy array of the
        index's dimension)."""
        values = [float(x) for x in (vector.tolist() if hasattr(vector, "tolist") else vector)]
        return self._search(self._post("/search", json={"vector": values, "k": k,
                                                        "filter": filter}))

    def search_like(self, item_id: str, k: int = 10, filter: str | None = None) -> SearchResult:
        """More like this: the ``k`` items nearest to one already indexed (itself left out)."""
        return self._search(self._post("/search", json={"id": item_id, "k": k,
                                                        "filter": filter}))

    @staticmethod
    def _search(body: Mapping[str, Any]) -> SearchResult:
        return SearchResult(hits=[_hit(h) for h in body["hits"]], k=body["k"],
                            filter=body.get("filter"), model_version=body["model_version"],
                            index=IndexRef(**body["index"]), timings_ms=body["timings_ms"])

    # -- recognition

    def recognize(self, image: Image, *, k: int = 5, threshold: float | None = None,
                  target_fpir: float | None = None) -> Recognition:
        """Who is this? The nearest enrolled identity, or ``"unknown"`` below the threshold: the
        model card's cut for the number of identities at ``target_fpir`` (default: the server's
        ``TWINSTREAM_RECOGNIZE_TARGET_FPIR``), unless ``threshold`` is given."""
        body = self._post("/recognize", data=_form(k=k, threshold=threshold,
                                                   target_fpir=target_fpir),
                          files=[_file("image", image)])
        return Recognition(
            label=body["label"], known=body["known"], score=body["score"],
            probability=body.get("probability"), threshold=body["threshold"],
            threshold_reason=body["threshold_reason"], gallery_size=body["gallery_size"],
            warning=body.get("warning"),
            best=_match(body["best"]) if body.get("best") else None,
            hits=[_match(h) for h in body["hits"]], model_version=body["model_version"],
            timings_ms=body["timings_ms"])

    def verify(self, a: Image, b: Image, *, threshold: float | None = None) -> Verification:
        """Do two images show the same thing? Their similarity against the pair threshold."""
        body = self._post("/verify", data=_form(threshold=threshold),
                          files=[_file("a", a), _file("b", b)])
        return Verification(body["score"], body.get("probability"), body["threshold"],
                            body["same"], body["model_version"])

    def enroll(self, images: Image | Iterable[Image], label: str, *, id: str | None = None,
               attributes: Mapping[str, Any] | None = None) -> Enrollment:
        """Add one or several reference images to the identity ``label`` (now, no Kafka round
        trip); enrolling the same image again changes nothing. Needs the token."""
        files = [_file("image", img) for img in _images(images)]
        data = _form(label=label, id=id, attributes=_json(attributes))
        body = self._post("/enroll", data=data, files=files)
        return Enrollment(body["id"], body["ids"], body["label"], body["references"],
                          body["model_version"], body["index"])

    # -- identities

    def identities(self) -> IdentityList:
        body = self._request("GET", "/identities")
        return IdentityList(body["index"], body["model_version"],
                            [_identity(i) for i in body["identities"]])

    def identity(self, label: str) -> IdentityDetail:
        body = self._request("GET", f"/identities/{_path(label)}")
        return IdentityDetail(body["label"], body["references"], body["thumbnail_url"],
                              body["index"], body["model_version"], body["reference_ids"])

    def remove_identity(self, label: str) -> IdentityRemoval:
        """Remove an identity and its reference images. Needs the token."""
        body = self._request("DELETE", f"/identities/{_path(label)}")
        return IdentityRemoval(body["label"], body["removed_references"])

    # -- discovering identities

    def clusters(self, *, threshold: float | None = None, min_size: int = 2,
                 unlabeled_only: bool = False, neighbours: int = 16,
                 resolution: float | None = None, limit: int = 100) -> Clustering:
        """The live index's items grouped into clusters (Leiden CPM on the neighbour graph)."""
        params = _form(threshold=threshold, min_size=min_size, neighbours=neighbours,
                       resolution=resolution, limit=limit,
                       unlabeled_only="true" if unlabeled_only else None)
        return _clustering(self._request("GET", "/clusters", params=params))

    def duplicates(self, *, threshold: float | None = None, neighbours: int = 16,
                   limit: int = 100) -> Clustering:
        """Groups of near-duplicate items (copies, re-encodes)."""
        params = _form(threshold=threshold, neighbours=neighbours, limit=limit)
        return _clustering(self._request("GET", "/duplicates", params=params))

    def label_cluster(self, cluster: Cluster | str, label: str, *,
                      ids: Sequence[str] | None = None) -> ClusterLabelling:
        """Enroll a cluster's members as one identity. Given a :class:`Cluster`, its members
        as listed are sent, so the server checks the group did not change. Needs the token."""
        if isinstance(cluster, Cluster):
            cluster_id, ids = cluster.id, [m.id for m in cluster.members] if ids is None else ids
        else:
            cluster_id = cluster
        body = self._post(f"/clusters/{_path(cluster_id)}/label",
                          json={"label": label, "ids": None if ids is None else list(ids)})
        return ClusterLabelling(body["cluster"], body["label"], body["ids"],
                                body["references"], body["skipped"], body["model_version"])

    # -- items

    def item(self, item_id: str, *, vector: bool = False) -> Item:
        """An indexed item's attributes (and its stored vector with ``vector=True``)."""
        body = self._request("GET", f"/items/{_path(item_id)}",
                             params={"vector": "true"} if vector else None)
        return Item(body["id"], body["model_version"], body["attributes"],
                    body["thumbnail_url"], body.get("vector"))

    def thumbnail(self, item_id: str) -> bytes:
        """The item's JPEG thumbnail (at most 128 px)."""
        return self._send("GET", f"/items/{_path(item_id)}/thumbnail").content

    def delete(self, item_id: str) -> Deletion:
        """Publish a tombstone: the workers remove the item. Needs the token."""
        body = self._request("DELETE", f"/items/{_path(item_id)}")
        return Deletion(body["id"], body["indexed"], body["topic"], body.get("status", "queued"))

    def ingest(self, images: Image | Iterable[Image], *, id: str | None = None,
               label: str | None = None,
               attributes: Mapping[str, Any] | None = None) -> Queued:
        """Publish 1-64 images to the images topic; the workers embed and index them shortly
        (``id`` names a single image; default: its content hash). Needs the token."""
        files = [_file("image", img) for img in _images(images)]
        body = self._post("/ingest", data=_form(id=id, label=label,
                                                attributes=_json(attributes)), files=files)
        return Queued(body["ids"], body["topic"], body.get("status", "queued"))

    # -- operations

    def healthy(self) -> bool:
        """Whether the server answers (``/healthz``)."""
        try:
            self._request("GET", "/healthz")
        except ApiError:
            return False
        return True

    def ready(self) -> Readiness:
        """``/readyz``: Redis answers, the model is loaded, the live index exists and fits it.
        Not ready is an answer here, not an exception."""
        response = self._send("GET", "/readyz", ok=(200, 503))
        body = response.json()
        return Readiness(bool(body.get("ready")), body.get("checks") or {})

    # -- transport

    def _post(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._request("POST", path, **kwargs)

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._send(method, path, **kwargs).json()

    def _send(self, method: str, path: str, ok: Sequence[int] = (), **kwargs: Any
              ) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ApiTimeoutError(f"no answer from {self.http.base_url} in time "
                                  f"({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise ApiUnavailableError(f"cannot reach the API at {self.http.base_url}: "
                                      f"{type(exc).__name__}: {exc}") from exc
        if response.is_success or response.status_code in ok:
            return response
        raise error_from_response(response)


# --- request helpers ---------------------------------------------------------------------------

def _file(field_name: str, image: Image) -> tuple[str, tuple[str, bytes, str]]:
    """A multipart file part from bytes, a path or an open binary file."""
    if isinstance(image, bytes | bytearray | memoryview):
        return field_name, (field_name, bytes(image), "application/octet-stream")
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}",
                             field=field_name) from exc
        return field_name, (path.name, data, "application/octet-stream")
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, bytes):
            raise InputError("open the image file in binary mode ('rb')", field=field_name)
        name = Path(str(getattr(image, "name", field_name))).name
        return field_name, (name, data, "application/octet-stream")
    raise InputError(f"an image is bytes, a path or a binary file, not {type(image).__name__}",
                     field=field_name)


def _images(images: Image | Iterable[Image]) -> list[Image]:
    if isinstance(images, bytes | bytearray | memoryview | str | os.PathLike) or hasattr(
            images, "read"):
        return [images]  # type: ignore[list-item]
    return list(images)  # type: ignore[arg-type]


def _form(**fields: Any) -> dict[str, str]:
    return {k: str(v) for k, v in fields.items() if v is not None}


def _json(attributes: Mapping[str, Any] | None) -> str | None:
    return None if attributes is None else json.dumps(dict(attributes))


def _path(value: str) -> str:
    """An id or label as one path segment (ids may hold '/', '?', '#')."""
    return quote(value, safe="")


__all__ = [
    "ApiError", "ApiNotFoundError", "ApiOverloadedError", "ApiTimeoutError",
    "ApiUnavailableError", "BadRequestError", "Client", "Cluster", "ClusterLabelling",
    "ClusterMember", "Clustering", "Deletion", "Enrollment", "Hit",
    "Identity", "IdentityDetail", "IdentityList", "IdentityMatch", "IdentityRemoval", "IndexRef",
    "InvalidRequestError", "Item", "ModelMismatchError", "NotAnImageError",
    "PayloadTooLargeError", "Queued", "Readiness", "Recognition", "SearchResult", "ServerError",
    "UnauthorizedError", "Verification", "error_from_response",
]
