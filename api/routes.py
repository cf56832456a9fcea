"""The HTTP endpoints: parse and check the request, run the service in a thread, shape the JSON."""

from __future__ import annotations

import functools
import hmac
from typing import Annotated, Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.datastructures import UploadFile as StarletteUploadFile

from api.errors import ApiError
from api.ingest import StreamWriter
from api.schemas import (
    ClusterMemberOut,
    ClusterOut,
    ClustersResponse,
    DeleteResponse,
    EnrollResponse,
    ErrorResponse,
    HitOut,
    IdentitiesResponse,
    IdentityHitOut,
    IdentityOut,
    IdentityRemovedResponse,
    IdentityResponse,
    IngestResponse,
    ItemResponse,
    LabelClusterRequest,
    LabelClusterResponse,
    RecognizeResponse,
    SearchOptions,
    SearchResponse,
    VectorQuery,
    VerifyResponse,
)
from index.clusters import DEFAULT_MIN_SIZE, DEFAULT_NEIGHBOURS, DUPLICATE_THRESHOLD, Clustering
from index.identities import Identity, IdentityHit
from index.service import SearchResult, SearchService
from index.store import Hit
from twinstream.errors import InputError
from twinstream.fields import parse_attributes
from twinstream.thumbnails import media_type

MAX_INGEST_FILES = 64

router = APIRouter()
bearer = HTTPBearer(auto_error=False, description="TWINSTREAM_API_TOKEN, when the server has one")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


async def blocking(fn, *args, **kwargs):
    """Run blocking work (onnxruntime, Redis, Kafka) in a worker thread.

    ``abandon_on_cancel``: when the request times out, the response goes out at once instead of
    waiting for the thread.
    """
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                          abandon_on_cancel=True)


def service(request: Request) -> SearchService:
    return request.app.state.service


def stream(request: Request) -> StreamWriter:
    return request.app.state.stream


def require_token(request: Request,
                  credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    """Write endpoints need ``Authorization: Bearer <token>`` when the server has one
    (``TWINSTREAM_API_TOKEN`` or the file ``--token-file`` names)."""
    token = request.app.state.token
    if not token:
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                       headers={"WWW-Authenticate": "Bearer"})


def thumbnail_url(request: Request, image_id: str) -> str:
    return f"{request.scope.get('root_path', '')}/items/{quote(image_id, safe='')}/thumbnail"


def hit_out(request: Request, hit: Hit, probability: float | None = None) -> HitOut:
    return HitOut(id=hit.id, score=hit.score, probability=probability,
                  attributes=hit.attributes, thumbnail_url=thumbnail_url(request, hit.id))


def identity_out(request: Request, identity: Identity) -> IdentityOut:
    return IdentityOut(label=identity.label, references=identity.references,
                       thumbnail_url=thumbnail_url(request, identity.cover))


def identity_hit_out(request: Request, hit: IdentityHit, probability: float | None
                     ) -> IdentityHitOut:
    return IdentityHitOut(**identity_out(request, hit.identity).model_dump(), score=hit.score,
                          probability=probability)


def _server_timing(timings: dict[str, float]) -> dict[str, str]:
    return {"Server-Timing": ", ".join(f"{k};dur={v}" for k, v in timings.items())}


# --- search ------------------------------------------------------------------------------------

SEARCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary",
                              "description": "the query image (PNG, JPEG, WebP, GIF, BMP...)"},
                    "k": {"type": "integer", "minimum": 1, "default": 10},
                    "filter": {"type": "string",
                               "description": 'attribute filter, e.g. .label == "cat"'},
                }}},
            "application/json": {"schema": VectorQuery.model_json_schema()},
        },
    }
}


@router.post("/search", response_model=SearchResponse, openapi_extra=SEARCH_BODY,
             responses=_errors(400, 404, 409, 413, 415, 422, 503, 504), tags=["search"])
async def search(request: Request) -> Response:
    """Nearest items to an uploaded image (multipart ``image``, ``k``, ``filter``), to a vector,
    or to an indexed item (JSON ``{"vector": [...]} `` or ``{"id": "..."}`` with ``k``, ``filter``).
    """
    svc = service(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            options = _validated(SearchOptions, {k: v for k, v in form.items()
                                                 if isinstance(v, str)})
            upload = form.get("image")
            if not isinstance(upload, StarletteUploadFile):
                raise ApiError(422, "image: a file upload named 'image' is required",
                               [{"field": "image", "message": "missing file"}])
            data = await upload.read()
        k, filt = svc.check_k(options.k), svc.check_filter(options.filter)
        result = await blocking(svc.search_image, data, k, filt)
    elif content_type == "application/json" or content_type.endswith("+json"):
        query = _validated(VectorQuery, await _json_body(request))
        k, filt = svc.check_k(query.k), svc.check_filter(query.filter)
        if query.id is not None:
            result = await blocking(svc.search_like, query.id, k, filt)
        else:
            result = await blocking(svc.search_vector, query.vector, k, filt)
    else:
        raise ApiError(415, "send multipart/form-data with an 'image' file, or application/json "
                            "with a 'vector' or an 'id'")
    return _search_response(request, result, k, filt)


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except RecursionError as exc:
        raise ApiError(400, "body is not valid JSON: nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError(400, f"body is not valid JSON: {str(exc)[:200]}") from exc


def _validated(model, data: Any):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                  for e in exc.errors()]
        first = detail[0] if detail else {"field": "", "message": "invalid"}
        raise ApiError(422, f"{first['field'] or 'body'}: {first['message']}", detail) from exc


def _search_response(request: Request, result: SearchResult, k: int, filt: str | None
                     ) -> JSONResponse:
    info = result.index.info
    body = SearchResponse(
        model_version=info.version, index={"name": info.name, "version": info.version,
                                           "dim": info.dim},
        k=k, filter=filt, hits=[hit_out(request, h, p) for h, p in
                                zip(result.hits, result.probabilities, strict=True)],
        timings_ms=result.timings_ms)
    return JSONResponse(body.model_dump(), headers=_server_timing(result.timings_ms))


# --- items -------------------------------------------------------------------------------------
# The thumbnail route comes first: ids may contain "/", so "{item_id:path}" would swallow it.

@router.get("/items/{item_id:path}/thumbnail", responses={
    200: {"content": {"image/jpeg": {}, "image/png": {}},
          "description": "a JPEG of at most 128x128, or the image itself when it was a small "
                         "PNG or JPEG already"},
    **_errors(404, 503)}, response_class=Response, tags=["items"])
async def get_thumbnail(request: Request, item_id: str) -> Response:
    """The small picture kept for an item at ingest time."""
    picture = await blocking(service(request).thumbnail, item_id)
    # nosniff: the bytes may be a producer's own small PNG or JPEG; a browser must never read
    # them as anything but the image type they are served as.
    return Response(picture, media_type=media_type(picture),
                    headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"})


@router.get("/items/{item_id:path}", response_model=ItemResponse,
            responses=_errors(404, 503), tags=["items"])
async def get_item(request: Request, item_id: str,
                   vector: Annotated[bool, Query(description="include the stored vector")] = False
                   ) -> ItemResponse:
    """An indexed item's attributes (and, on request, its stored vector)."""
    index, attrs, stored = await blocking(service(request).item, item_id, vector)
    return ItemResponse(id=item_id, model_version=index.info.version, attributes=attrs,
                        thumbnail_url=thumbnail_url(request, item_id),
                        vector=None if stored is None else [float(x) for x in stored])


@router.delete("/items/{item_id:path}", response_model=DeleteResponse, status_code=202,
               dependencies=[Depends(require_token)],
               responses=_errors(401, 422, 503), tags=["write"])
async def delete_item(request: Request, item_id: str) -> DeleteResponse:
    """Publish a tombstone for the id; the workers remove it from the index."""
    writer = stream(request)
    indexed = await blocking(writer.delete, item_id)
    request.app.state.metrics.published.labels("tombstone").inc()
    return DeleteResponse(id=item_id, indexed=indexed, topic=writer.settings.topic)


# --- one-shot recognition ----------------------------------------------------------------------

ImageFile = Annotated[UploadFile, File(description="an image (PNG, JPEG, WebP, GIF, BMP...)")]
Threshold = Annotated[float | None, Form(
    description="cosine cut for 'same'; default: the model card's")]


@router.post("/recognize", response_model=RecognizeResponse,
             responses=_errors(400, 409, 413, 415, 422, 503, 504), tags=["recognition"])
async def recognize_image(request: Request, image: ImageFile,
                          k: Annotated[int, Form(description="candidates, 1..max k")] = 5,
                          threshold: Threshold = None,
                          target_fpir: Annotated[float | None, Form(
                              description="share of strangers that may be accepted; default "
                                          "TWINSTREAM_RECOGNIZE_TARGET_FPIR")] = None
                          ) -> RecognizeResponse:
    """The enrolled identity nearest to the image (its prototype: the normalised mean of its
    references), or "unknown" below the threshold; the threshold fits the number of enrolled
    identities unless one is given, and the answer says which was used and why."""
    svc = service(request)
    result, index, timings = await blocking(svc.recognize, await image.read(), k, threshold,
                                            target_fpir=target_fpir)
    hits = [identity_hit_out(request, h, p)
            for h, p in zip(result.hits, result.probabilities, strict=True)]
    return RecognizeResponse(
        label=result.label if result.known else "unknown", known=result.known,
        score=result.score, probability=result.probability, threshold=result.threshold,
        threshold_reason=result.threshold_reason, gallery_size=result.gallery_size,
        warning=result.warning, best=hits[0] if hits else None, hits=hits,
        model_version=index.info.version, timings_ms=timings)


@router.post("/verify", response_model=VerifyResponse,
             responses=_errors(400, 413, 415, 422, 503, 504), tags=["recognition"])
async def verify_pair(request: Request, a: ImageFile, b: ImageFile,
                      threshold: Threshold = None) -> VerifyResponse:
    """Whether two images show the same thing: their similarity against the threshold."""
    svc = service(request)
    result = await blocking(svc.verify, await a.read(), await b.read(), threshold)
    return VerifyResponse(score=result.score, probability=result.probability,
                          threshold=result.threshold, same=result.same,
                          model_version=svc.require_encoder().version)


@router.post("/enroll", response_model=EnrollResponse, status_code=201,
             dependencies=[Depends(require_token)],
             responses=_errors(400, 401, 409, 413, 415, 422, 503, 504), tags=["write"])
async def enroll_image(request: Request,
                       image: Annotated[list[UploadFile], File(
                           description=f"one or more reference images of the identity (at most "
                                       f"{MAX_INGEST_FILES})")],
                       label: Annotated[str, Form(description="the identity's name")],
                       id: Annotated[str | None, Form(
                           description="id of a single image; default: content hash")] = None,
                       attributes: Annotated[str | None, Form(
                           description="JSON object of extra attributes")] = None
                       ) -> EnrollResponse:
    """Add reference images to one identity now (no Kafka round trip); its prototype is
    recomputed. Enrolling the same image again changes nothing."""
    svc = service(request)
    if not 1 <= len(image) <= MAX_INGEST_FILES:
        raise ApiError(422, f"send between 1 and {MAX_INGEST_FILES} images, got {len(image)}")
    attrs = form_attributes(attributes, None)
    done = await blocking(svc.enroll, [await u.read() for u in image], label, id, attrs)
    return EnrollResponse(id=done.ids[0], ids=done.ids, label=done.label,
                          references=done.references, model_version=done.index.info.version,
                          index=done.index.info.name)


# --- identities --------------------------------------------------------------------------------

@router.get("/identities", response_model=IdentitiesResponse, responses=_errors(503),
            tags=["recognition"])
async def list_identities(request: Request) -> IdentitiesResponse:
    """Every enrolled identity with its number of references."""
    index, found = await blocking(service(request).identities)
    return IdentitiesResponse(index=index.info.name, model_version=index.info.version,
                              identities=[identity_out(request, i) for i in found])


@router.get("/identities/{label:path}", response_model=IdentityResponse,
            responses=_errors(404, 422, 503), tags=["recognition"])
async def show_identity(request: Request, label: str) -> IdentityResponse:
    """One identity and the ids of its reference images."""
    index, found, refs = await blocking(service(request).identity, label)
    return IdentityResponse(**identity_out(request, found).model_dump(), index=index.info.name,
                            model_version=index.info.version, reference_ids=list(refs))


@router.delete("/identities/{label:path}", response_model=IdentityRemovedResponse,
               dependencies=[Depends(require_token)], responses=_errors(401, 404, 422, 503),
               tags=["write"])
async def remove_identity(request: Request, label: str) -> IdentityRemovedResponse:
    """Remove an identity and its reference images from the index."""
    _, refs = await blocking(service(request).remove_identity, label)
    return IdentityRemovedResponse(label=label.strip(), removed_references=refs)


# --- discovering identities --------------------------------------------------------------------

Limit = Annotated[int, Query(ge=1, le=10_000, description="clusters listed, largest first")]
Neighbours = Annotated[int, Query(ge=1, le=1000, description="nearest neighbours per item")]


def clusters_out(request: Request, index, clustering: Clustering, reason: str,
                 warning: str | None, limit: int) -> ClustersResponse:
    attrs = clustering.attributes

    def member(image_id: str) -> ClusterMemberOut:
        label = attrs.get(image_id, {}).get("label")
        return ClusterMemberOut(id=image_id, label=None if label is None else str(label),
                                thumbnail_url=thumbnail_url(request, image_id))

    listed = [ClusterOut(id=c.id, size=c.size, cohesion=c.cohesion, labels=c.labels,
                         cover=member(c.cover), members=[member(m) for m in c.members])
              for c in clustering.clusters[:limit]]
    return ClustersResponse(
        index=index.info.name, model_version=index.info.version, method=clustering.method,
        resolution=clustering.resolution, threshold=clustering.threshold,
        threshold_reason=reason, warning=warning,
        items=clustering.items, clustered=clustering.clustered, edges=clustering.edges,
        total_clusters=len(clustering.clusters), clusters=listed,
        timings_s=clustering.timings_s)


@router.get("/clusters", response_model=ClustersResponse, responses=_errors(404, 422, 503),
            tags=["clusters"])
async def list_clusters(request: Request,
                        threshold: Annotated[float | None, Query(
                            description="cosine at which two items are neighbours; default: "
                                        "the model card's pair threshold")] = None,
                        min_size: Annotated[int, Query(ge=1)] = DEFAULT_MIN_SIZE,
                        unlabeled_only: bool = False,
                        neighbours: Neighbours = DEFAULT_NEIGHBOURS,
                        resolution: Annotated[float | None, Query(
                            description="Leiden CPM resolution: the cosine weight a cluster "
                                        "needs per pair of members; default 0.0125 x "
                                        "neighbours")] = None,
                        limit: Limit = 100) -> ClustersResponse:
    """Groups of look-alike items of the live index (candidate identities): each item's nearest
    neighbours above the threshold make a graph; its Leiden (CPM) communities are the
    clusters."""
    found = await blocking(service(request).clusters, threshold, min_size,
                           unlabeled_only=unlabeled_only, neighbours=neighbours,
                           resolution=resolution)
    return clusters_out(request, found.index, found.clustering, found.threshold_reason,
                        found.warning, limit)


@router.get("/duplicates", response_model=ClustersResponse, responses=_errors(404, 422, 503),
            tags=["clusters"])
async def list_duplicates(request: Request,
                          threshold: Annotated[float, Query(
                              description="cosine at which two items are near-duplicates")
                          ] = DUPLICATE_THRESHOLD,
                          neighbours: Neighbours = DEFAULT_NEIGHBOURS,
                          limit: Limit = 100) -> ClustersResponse:
    """Groups of near-duplicate items (copies, re-encodes): connected at a high cosine."""
    index, found = await blocking(service(request).duplicates, threshold,
                                  neighbours=neighbours)
    return clusters_out(request, index, found, f"cosine {found.threshold:g}: near-duplicates",
                        None, limit)


@router.post("/clusters/{cluster}/label", response_model=LabelClusterResponse,
             dependencies=[Depends(require_token)], responses=_errors(401, 404, 422, 503),
             tags=["write"])
async def label_cluster(request: Request, cluster: str, body: LabelClusterRequest
                        ) -> LabelClusterResponse:
    """Enroll a cluster's members as one identity: each gets the label and becomes a reference
    of the identity (its prototype: the normalised mean of their vectors)."""
    done = await blocking(service(request).label_cluster, cluster, body.label, body.ids,
                          threshold=body.threshold, min_size=body.min_size,
                          unlabeled_only=body.unlabeled_only, resolution=body.resolution)
    return LabelClusterResponse(cluster=done.cluster, label=done.label, ids=done.ids,
                                references=done.references, skipped=done.skipped,
                                model_version=done.index.info.version)


@router.post("/ingest", response_model=IngestResponse, status_code=202,
             dependencies=[Depends(require_token)],
             responses=_errors(400, 401, 413, 415, 422, 503, 504), tags=["write"])
async def ingest_images(request: Request,
                        image: Annotated[list[UploadFile], File(
                            description=f"one or more images (at most {MAX_INGEST_FILES})")],
                        id: Annotated[str | None, Form(
                            description="id of a single image; default: content hash")] = None,
                        label: Annotated[str | None, Form(max_length=200)] = None,
                        attributes: Annotated[str | None, Form(
                            description="JSON object of extra attributes")] = None
                        ) -> IngestResponse:
    """Publish images to the images topic; the workers embed and index them."""
    writer = stream(request)
    if not 1 <= len(image) <= MAX_INGEST_FILES:
        raise ApiError(422, f"send between 1 and {MAX_INGEST_FILES} images, got {len(image)}")
    if id is not None and len(image) != 1:
        raise ApiError(422, "id names a single image; leave it out when sending several")
    attrs = form_attributes(attributes, label)
    uploads = [(await u.read(), u.content_type or "application/octet-stream") for u in image]
    ids = await blocking(writer.ingest, uploads, id, attrs)
    request.app.state.metrics.published.labels("image").inc(len(ids))
    return IngestResponse(ids=ids, topic=writer.settings.topic)


def form_attributes(text: str | None, label: str | None) -> dict[str, Any]:
    """Form fields ``attributes`` (a JSON object) and ``label``, checked like a record's."""
    try:
        attrs = parse_attributes(text)
    except InputError as exc:
        raise InputError(f"attributes: {exc.message}", field="attributes") from exc
    if label is not None and label.strip():
        attrs["label"] = SearchService.check_label(label)
    return attrs
